"""Flow `index_gallery`: (re-)index a reference gallery into LanceDB (rasr/retrieval/index_run.py).

plan (list the gallery, compare with the table, under its writer lock) -> embed new/changed files in
shards on Ray actors, each shard upserted as it arrives -> finish (vanished rows, hygiene, maintenance)
-> summary artifact.
"""

from __future__ import annotations

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr.catalog import chunks
from rasr.retrieval.index_run import IndexConfig, IndexRun, configure
from tasks import progress
from tasks.actors import EmbedActor, actor_pool
from tasks.cluster import Cluster
from tasks.index import as_dicts, embed_shard


@flow(name="index-gallery")
def index_gallery(gallery: str, config: IndexConfig, cluster: Cluster | None = None, show_progress: bool = False) -> dict:
    """Embed a gallery folder or s3:// prefix into the LanceDB config.db; only new or changed files are embedded."""
    cfg = configure(config)
    flow_setup(cfg, cluster)
    with IndexRun.open(gallery, cfg, warn=get_run_logger().warning) as run:
        get_run_logger().info(run.describe())
        if todo := run.plan.to_embed:
            with progress.bar(f"index-{run.gallery.name}", len(todo), "embedding", show_progress) as key, \
                    actor_pool(EmbedActor, **run.embedder_args(), cluster=cluster) as pool:
                futures = [embed_shard.submit(as_dicts(s), pool, cfg.batch_size, key) for s in chunks(todo, cfg.shard_size)]
                for fut in futures:
                    run.apply(*fut.result())
        summary = run.finish()
    publish_summary("index-summary", summary, errors=summary["errors"],
                    title=f"Indexed {summary['embedded']} images into {summary['table']}")
    return summary
