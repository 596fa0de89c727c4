"""Flow `index_gallery`: (re-)index a reference gallery into LanceDB.

list the gallery -> compare with the table (uri, size, mtime) -> embed new/changed files in shards on
Ray actors -> upsert each shard from this one process (single writer) -> delete vanished files ->
maintain (ANN index above the threshold, compaction) -> summary artifact.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import catalog, storage
from rasr.retrieval.encoders import DEFAULT_ENCODER, load_encoder
from rasr.retrieval.gallery import Gallery, table_encoder
from rasr.retrieval.embedding import IndexConfig, hygiene, plan_index
from rasr.locks import gallery_lock
from tasks import progress
from tasks.actors import EmbedActor, actor_pool
from tasks.cluster import Cluster
from tasks.index import as_dicts, embed_shard


@flow(name="index-gallery")
def index_gallery(gallery: str, db: str, config: IndexConfig | None = None, cluster: Cluster | None = None,
                  show_progress: bool = False) -> dict:
    """Embed a gallery folder or s3:// prefix into a LanceDB table; only new/changed files are embedded.

    config.encoder None: the encoder of the gallery's existing table in `db`, else DEFAULT_ENCODER."""
    cfg = config or IndexConfig()
    flow_setup(cfg, cluster)
    log = get_run_logger()
    encoder = cfg.encoder or table_encoder(db, cfg.table) or DEFAULT_ENCODER
    t0 = time.perf_counter()
    listing = catalog.list_inputs(gallery)
    with gallery_lock(db, cfg.table):
        # the encoder's dimension and identity fix the table schema; loading it here is cheap (CPU)
        probe = load_encoder(encoder, weights=cfg.encoder_weights, device="cpu")
        g = Gallery.create_or_open(db, cfg.table, encoder, probe.dim, probe.weights_id)
        del probe
        if g.upgrade_hint:
            log.warning(g.upgrade_hint)
        plan = plan_index(listing, g.files())
        log.info(f"gallery {storage.redact(gallery)}: {len(listing)} files, {len(plan.to_embed)} to embed, "
                 f"{len(plan.to_delete)} vanished, {plan.unchanged} unchanged")
        errors: list[dict] = []
        excluded: list[dict] = []  # too small to be a reference (--min-ref-side)
        new_rows: list[dict] = []
        embedded = 0
        if plan.to_embed:
            key = f"index-{g.name}"
            progress.start(key, len(plan.to_embed), "embedding", show_progress)
            try:
                with actor_pool(EmbedActor, encoder, cfg.encoder_weights, cfg.max_pixels, batch_size=cfg.batch_size,
                                preprocessing=g.preprocessing, views=g.views, min_side=cfg.min_ref_side,
                                cluster=cluster) as pool:
                    shards = [plan.to_embed[i:i + cfg.shard_size] for i in range(0, len(plan.to_embed), cfg.shard_size)]
                    futures = [embed_shard.submit(as_dicts(s), pool, cfg.batch_size, key) for s in shards]
                    for fut in futures:  # upsert as shards finish: a crash keeps what is already written
                        rows, errs = fut.result()
                        g.upsert(rows)
                        embedded += len(rows)
                        new_rows.extend(rows)
                        errors.extend(e for e in errs if not e.get("excluded"))
                        excluded.extend(e for e in errs if e.get("excluded"))
            finally:
                progress.close(key)
        # files that failed to decode (or are now too small) must not stay in the table with stale vectors
        indexed = g.files() if errors or excluded else {}
        stale = plan.to_delete + [e["uri"] for e in errors + excluded if e["uri"] in indexed]
        deleted = g.delete_uris(stale) if stale else 0
        report = hygiene(g, new_rows, cfg.near_duplicate)
        maint = (g.maintain(compact=cfg.compact, keep_versions_for=dt.timedelta(minutes=cfg.keep_versions_minutes))
                 if (embedded or deleted) else {"rows": g.count(), "index": None})
        versions = len(g.table.list_versions())
    summary = {
        "gallery": storage.redact(gallery), "db": storage.redact(db), "table": g.name, "encoder": encoder,
        "files": len(listing), "embedded": embedded, "deleted": len(plan.to_delete), "unchanged": plan.unchanged,
        "failed": len(errors), "rows": maint["rows"], "versions": versions,
        "ann_index": maint.get("index") or "none (exact search)",
        "preprocessing": g.preprocessing, "views": g.views, "upgrade_hint": g.upgrade_hint, "excluded_small": len(excluded),
        **{k: len(v) for k, v in report.items()}, "hygiene": {**report, "excluded_small": excluded},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    publish_summary("index-summary", summary, errors=errors,
                    title=f"Indexed {summary['embedded']} images into {g.name}")
    summary["errors"] = errors
    return summary
