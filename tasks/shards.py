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

from rasr import catalog, faults, manifest, storage
from rasr.catalog import Shard
from tasks import progress
from tasks.actors import ActorPool, root_cause
from tasks.runtime import ray


# a batch whose worker died is sent to the next worker this many times before its shard fails
BATCH_RETRIES = 2


@task(name="run-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def run_shard(shard: dict, out: str, run_id: str, cfg_hash: str, pool: ActorPool, per_call: int,
              schemas: dict[str, pa.Schema], progress_key: str = "") -> dict:
    """Process every input of a shard; the done-marker is written last, only when all rows exist.

    The shard is claimed first (a lease next to the done-markers): a shard another live run holds is
    left to it ("deferred"), so two runs on one output split the work instead of both doing all of it.
    per_call: inputs per actor call (the actor pipelines reading, the model and writing inside a call)."""
    s = Shard.from_dict(shard)
    lease = catalog.shard_lease(out, s.id, run_id)
    if lease is not None and not lease.acquire():
        holder = lease.holder() or {}
        progress.advance(progress_key, len(s.items))
        return _result(s, deferred=len(s.items), held_by=holder.get("run_id") or "another run")
    try:
        if lease is not None:
            if storage.exists(catalog.done_marker_uri(out, s.id)):  # finished by the run we waited on
                progress.advance(progress_key, len(s.items))
                return _result(s, done_elsewhere=len(s.items))
            lease.keep_renewed()
        return _process(s, out, run_id, cfg_hash, pool, per_call, schemas, progress_key)
    finally:
        if lease is not None:
            lease.release()


def _result(s: Shard, **extra) -> dict:
    return {"shard_id": s.id, "n": 0, **{k: 0 for k in manifest.STATUSES}, "rows": 0, "seconds": 0.0,
            "retried": 0, "deferred": 0, "done_elsewhere": 0, **extra}


def _process(s: Shard, out: str, run_id: str, cfg_hash: str, pool: ActorPool, per_call: int,
             schemas: dict[str, pa.Schema], progress_key: str) -> dict:
    t0 = time.perf_counter()
    items = [asdict(i) for i in s.items]
    batches = [items[i:i + per_call] for i in range(0, len(items), per_call)]
    actor_of = {}

    def submit(i: int):
        actor = pool.next()
        ref = actor.process.remote(batches[i], out, s.id, run_id)
        actor_of[ref] = actor
        return ref

    pending = {submit(i): i for i in range(len(batches))}
    results: dict[int, dict[str, list[dict]]] = {}
    retries: Counter = Counter()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the call raised (e.g. the store is unreachable)
                raise RuntimeError(f"shard {s.id}: {root_cause(e)}") from None
            except ray.exceptions.RayActorError as e:  # the worker died mid-call: its outputs are not trusted
                if retries[i] >= BATCH_RETRIES:
                    raise RuntimeError(f"shard {s.id}: batch {i} lost its worker {retries[i] + 1} times: "
                                       f"{root_cause(e)}") from None
                retries[i] += 1
                pool.lost(actor_of[ref])
                pending[submit(i)] = i
                continue
            if retries[i]:
                for rows in results[i].values():
                    for r in rows:
                        if "notes" in r:
                            note = f"retried on another worker after a worker died ({retries[i]}x)"
                            r["notes"] = f"{r['notes']}; {note}" if r.get("notes") else note
            errors = sum(r["status"] == "error" for r in results[i]["manifest"])
            progress.advance(progress_key, len(batches[i]), **({"errors": errors} if errors else {}))
    tables = {name: [r for i in sorted(results) for r in results[i].get(name, [])] for name in schemas}
    rows = tables["manifest"]
    missing = {it["relpath"] for it in items} - {r["relpath"] for r in rows}
    if missing:  # a worker lost inputs: never mark such a shard done
        raise RuntimeError(f"shard {s.id}: no rows for {len(missing)} inputs, e.g. {sorted(missing)[0]}")
    for name, schema in schemas.items():
        faults.point("manifest-write")
        manifest.write_rows(manifest.shard_table_uri(out, name, s.id), tables[name], schema, catalog.temp_dir(out))
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
    faults.point("marker-write")
    storage.write_json(catalog.done_marker_uri(out, s.id), marker, catalog.temp_dir(out))
    per_input = Counter(status_of.values())
    return {**_result(s), "n": len(items), **{k: per_input.get(k, 0) for k in manifest.STATUSES},
            "rows": len(rows), "seconds": marker["seconds"], "retried": sum(retries.values())}
