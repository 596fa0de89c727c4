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
def search_batch(queries: list[str], out: str | None = None, config: SearchConfig | None = None,
                 cluster: Cluster | None = None, show_progress: bool = False) -> dict:
    """Search every query image (files, folders or s3:// prefixes) in the gallery config.db; write the rows to
    `out` if given."""
    cfg = config or SearchConfig()
    flow_setup(cfg, cluster)
    if not cfg.db:
        raise ValueError("a search needs the gallery's --db")
    db = cfg.db
    t0 = time.perf_counter()
    items = [it for q in queries for it in catalog.list_inputs(q)]
    rows: list[dict] = []
    if items:
        calls = catalog.chunks(items, CHUNK)
        with progress.bar(f"search-{id(items)}", len(items), "searching", show_progress) as key, \
                actor_pool(SearchActor, db, cfg.table, cfg.encoder_weights, cluster=cluster) as pool:
            results = pool.map_calls("search", [([asdict(i) for i in c], cfg.k, cfg.category) for c in calls],
                                     lambda i, _: progress.advance(key, len(calls[i])))
        rows = [r for res in results for r in res]
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
