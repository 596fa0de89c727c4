"""Flow `build_dataset`: category folders -> train / test / reference split, crops, top-k references.

plan (list, split; rasr/research/dataset.py) -> the reference split copied and indexed with the
pipeline's own gallery flow -> per category on actors: HR crops, the top-k references of each training
GT within its category, self-reference pairs -> dataset.parquet, then the done-marker. A rerun with the
same source listing and config is a no-op (the done-marker OUT/_done/dataset.json holds the hash of both).
"""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from flows.index import index_gallery
from rasr.research import dataset
from rasr.research.dataset import DatasetConfig
from rasr.retrieval.gallery import table_name
from rasr.retrieval.index_run import IndexConfig
from tasks.actors import DatasetActor, actor_pool
from tasks.cluster import Cluster


@flow(name="build-dataset")
def build_dataset(src: str, out: str, config: DatasetConfig | None = None, cluster: Cluster | None = None,
                  show_progress: bool = False) -> dict:
    """Build a RefDSR training set from SRC (category sub-folders) into OUT; returns a summary."""
    cfg = config or DatasetConfig()
    flow_setup(cfg, cluster)
    t0 = time.perf_counter()
    work = dataset.plan(src, out, cfg)
    if (earlier := work.done()) is not None:
        get_run_logger().info("dataset is up to date: nothing to do")
        return {**earlier, "rebuilt": False}
    work.copy_references()
    index_gallery(work.references, IndexConfig(db=work.db, encoder=cfg.encoder, table="reference"), cluster,
                  show_progress=show_progress)
    # in category order: the same rows, in the same order, as in one process
    with actor_pool(DatasetActor, work.db, table_name("reference", cfg.encoder), cluster=cluster) as pool:
        done = pool.map_calls("samples", work.calls())
    summary, skipped = work.finish(done, time.perf_counter() - t0)
    publish_summary("dataset-summary", summary, errors=skipped, title=f"Dataset {summary['out']}")
    return {**summary, "rebuilt": True, "errors": skipped}
