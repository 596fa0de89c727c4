"""Flow `build_dataset`: category folders -> train / test / reference split, crops, top-k references.

A rerun with the same source listing and config is a no-op (the done-marker OUT/_done/dataset.json
holds the hash of both).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from flows.index import index_gallery
from rasr import catalog, storage
from rasr.research.dataset import DATASET_SCHEMA, DatasetConfig, split_category
from rasr.retrieval.gallery import table_name
from rasr.retrieval.embedding import IndexConfig
from tasks.actors import DatasetActor, actor_pool
from tasks.cluster import Cluster


@flow(name="build-dataset")
def build_dataset(src: str, out: str, config: DatasetConfig | None = None, cluster: Cluster | None = None,
                  show_progress: bool = False) -> dict:
    """Build a RefDSR training set from SRC (category sub-folders) into OUT; returns a summary."""
    cfg = config or DatasetConfig()
    flow_setup(cfg, cluster)
    log = get_run_logger()
    t0 = time.perf_counter()
    items = [i for i in catalog.list_inputs(src) if i.is_image and "/" in i.relpath]
    if not items:
        raise ValueError(f"no images in category sub-folders under {storage.redact(src)} (expected SRC/<category>/<image>)")
    marker_uri = storage.join(out, catalog.DONE_DIR, "dataset.json")
    key = {"config": cfg.hash(), "listing": catalog.shard_id("listing", items)}
    if storage.exists(marker_uri) and {k: storage.read_json(marker_uri).get(k) for k in key} == key:
        log.info("dataset is up to date: nothing to do")
        return {**storage.read_json(marker_uri)["summary"], "rebuilt": False}

    by_cat: dict[str, list[catalog.Item]] = defaultdict(list)
    for it in items:
        by_cat[catalog.category_of(it.relpath)].append(it)
    splits = {c: split_category(v, cfg, c) for c, v in sorted(by_cat.items())}

    # 1. the reference database, copied, then indexed with the pipeline's own gallery code (on actors)
    for sp in splits.values():
        for it in sp["reference"]:
            storage.write_bytes(storage.join(out, "reference", it.relpath), storage.read_bytes(it.uri))
    db = storage.join(out, "refs.lance")
    index_gallery(storage.join(out, "reference"), db, IndexConfig(encoder=cfg.encoder, table="reference"), cluster,
                  show_progress=show_progress)

    # 2. per category on actors (each holds the encoder and the reference DB): HR crops of the train/test
    # images, the top-k references of each training GT within its category, self-reference pairs
    as_dicts = {c: {k: [dataclasses.asdict(i) for i in sp[k]] for k in ("train", "test")} for c, sp in splits.items()}
    table = table_name("reference", cfg.encoder)
    rows, skipped = [], []
    with actor_pool(DatasetActor, db, table, cluster=cluster) as pool:
        done = pool.map_calls("samples", [({c: sp}, dataclasses.asdict(cfg), out) for c, sp in as_dicts.items()])
    for r, s in done:  # in category order: the same rows, in the same order, as in one process
        rows += r
        skipped += s
    storage.write_parquet(storage.join(out, "dataset.parquet"), rows, DATASET_SCHEMA)
    summary = {"src": storage.redact(src), "out": storage.redact(out), "categories": len(splits),
               "train": sum(r["split"] == "train" and r["kind"] == "retrieval" for r in rows),
               "self_pairs": sum(r["kind"] == "self" for r in rows),
               "test": sum(r["split"] == "test" for r in rows),
               "reference": sum(len(sp["reference"]) for sp in splits.values()), "skipped": len(skipped),
               "seconds": round(time.perf_counter() - t0, 2)}
    storage.write_json(marker_uri, {**key, "summary": summary})
    publish_summary("dataset-summary", summary, errors=skipped, title=f"Dataset {storage.redact(out)}")
    return {**summary, "rebuilt": True, "errors": skipped}
