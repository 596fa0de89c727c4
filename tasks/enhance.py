"""Prefect task: enhance one shard on the actor pool, then write its manifest and done-marker."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NONE

from rasr import catalog, manifest, storage
from rasr.catalog import Shard
from tasks import progress
from tasks.actors import ActorPool
from tasks.runtime import ray


@task(name="enhance-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def enhance_shard(shard: dict, out: str, run_id: str, cfg_hash: str, pool: ActorPool, batch_size: int,
                  progress_key: str = "") -> dict:
    """Enhance every input of a shard; the done-marker is written last, only when all rows exist."""
    s = Shard.from_dict(shard)
    t0 = time.perf_counter()
    items = [asdict(i) for i in s.items]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    pending = {pool.next().process.remote(b, out, s.id, run_id): i for i, b in enumerate(batches)}
    results: dict[int, list[dict]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            counts = Counter(r["status"] for r in results[i])
            progress.advance(progress_key, len(results[i]), **({"errors": counts["error"]} if counts["error"] else {}))
    rows = [r for i in sorted(results) for r in results[i]]
    if len(rows) != len(s.items):  # a worker lost rows: never mark such a shard done
        raise RuntimeError(f"shard {s.id}: {len(rows)} rows for {len(s.items)} inputs")
    manifest.write_rows(catalog.manifest_uri(out, s.id), rows)
    counts = Counter(r["status"] for r in rows)
    marker = {
        "shard_id": s.id, "config_hash": cfg_hash, "run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "counts": dict(counts), "seconds": round(time.perf_counter() - t0, 3),
        "items": [{"relpath": r["relpath"], "size": it["size"], "mtime": it["mtime"], "sha256": r["sha256"],
                   "status": r["status"]} for r, it in zip(rows, items)],
    }
    storage.write_json(catalog.done_marker_uri(out, s.id), marker)
    return {"shard_id": s.id, "n": len(rows), **{k: counts.get(k, 0) for k in manifest.STATUSES},
            "seconds": marker["seconds"]}
