"""Prefect task: run one shard on the actor pool, write its Parquet tables, then its done-marker.

Used by the enhance and evaluate flows alike: their actors return {table name: rows} for a batch of
inputs; the task writes <out>/<table>/shard=<id>/part-0.parquet for each table and, last of all,
<out>/_done/shard=<id>.json. A shard without its marker is redone by the next run.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from dataclasses import asdict

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NONE

from rasr import catalog, manifest, storage
from rasr.catalog import Shard
from tasks import progress
from tasks.actors import ActorPool
from tasks.runtime import ray


@task(name="run-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def run_shard(shard: dict, out: str, run_id: str, cfg_hash: str, pool: ActorPool, per_call: int,
              schemas: dict[str, pa.Schema], progress_key: str = "") -> dict:
    """Process every input of a shard; the done-marker is written last, only when all rows exist.

    per_call: inputs per actor call (the actor pipelines reading, the model and writing inside a call)."""
    s = Shard.from_dict(shard)
    t0 = time.perf_counter()
    items = [asdict(i) for i in s.items]
    batches = [items[i:i + per_call] for i in range(0, len(items), per_call)]
    pending = {pool.next().process.remote(b, out, s.id, run_id): i for i, b in enumerate(batches)}
    results: dict[int, dict[str, list[dict]]] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            results[i] = ray.get(ref)
            errors = sum(r["status"] == "error" for r in results[i]["manifest"])
            progress.advance(progress_key, len(batches[i]), **({"errors": errors} if errors else {}))
    tables = {name: [r for i in sorted(results) for r in results[i].get(name, [])] for name in schemas}
    rows = tables["manifest"]
    missing = {it["relpath"] for it in items} - {r["relpath"] for r in rows}
    if missing:  # a worker lost inputs: never mark such a shard done
        raise RuntimeError(f"shard {s.id}: no rows for {len(missing)} inputs, e.g. {sorted(missing)[0]}")
    for name, schema in schemas.items():
        manifest.write_rows(manifest.shard_table_uri(out, name, s.id), tables[name], schema)
    counts = Counter(r["status"] for r in rows)
    status_of = {}
    for r in rows:  # an input counts as failed if any of its rows failed
        status_of[r["relpath"]] = "error" if "error" in (r["status"], status_of.get(r["relpath"])) else r["status"]
    marker = {
        "shard_id": s.id, "config_hash": cfg_hash, "run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "counts": dict(counts), "seconds": round(time.perf_counter() - t0, 3),
        "items": [{"relpath": it["relpath"], "size": it["size"], "mtime": it["mtime"],
                   "status": status_of[it["relpath"]]} for it in items],
    }
    storage.write_json(catalog.done_marker_uri(out, s.id), marker)
    per_input = Counter(status_of.values())
    return {"shard_id": s.id, "n": len(items), **{k: per_input.get(k, 0) for k in manifest.STATUSES},
            "rows": len(rows), "seconds": marker["seconds"]}
