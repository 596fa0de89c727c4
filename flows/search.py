"""Flow `search_batch`: the top-k references of many query photos, on Ray actors (one model load each).

list queries -> chunks round-robin to SearchActors -> rows in input order -> JSON lines or Parquet.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import catalog, storage
from rasr.retrieval import search
from rasr.retrieval.search import SearchConfig
from tasks import progress
from tasks.actors import SearchActor, actor_pool
from tasks.cluster import Cluster

CHUNK = 64  # queries per actor call


@flow(name="search-batch")
def search_batch(queries: list[str], db: str, out: str | None = None, config: SearchConfig | None = None,
                 cluster: Cluster | None = None, show_progress: bool = False) -> dict:
    """Search every query image (files, folders or s3:// prefixes); write the rows to `out` if given."""
    cfg = config or SearchConfig()
    flow_setup(cfg, cluster)
    t0 = time.perf_counter()
    items = [it for q in queries for it in catalog.list_inputs(q)]
    rows: list[dict] = []
    if items:
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
        key = f"search-{id(items)}"
        progress.start(key, len(items), "searching", show_progress)
        try:
            with actor_pool(SearchActor, db, cfg.table, cfg.encoder_weights, cluster=cluster) as pool:
                results = pool.map_calls("search", [([asdict(i) for i in c], cfg.k, cfg.category) for c in chunks],
                                         lambda i, _: progress.advance(key, len(chunks[i])))
            rows = [r for res in results for r in res]
        finally:
            progress.close(key)
    if out:
        search.write_rows(out, rows)
    summary = {"queries": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
               "failed": sum(r["status"] == "error" for r in rows), "skipped": sum(r["status"] == "skipped" for r in rows),
               "k": cfg.k, "db": storage.redact(db), "out": storage.redact(out) if out else None,
               "seconds": round(time.perf_counter() - t0, 2)}
    publish_summary("search-summary", summary, errors=[{"uri": r["query_uri"], "error": r["error"]}
                                                       for r in rows if r["status"] == "error"],
                    title=f"Searched {len(rows)} images")
    summary["rows"] = rows
    return summary
