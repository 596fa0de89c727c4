"""Shards on actors: `process_shards` runs a flow's shards on an actor pool, a bounded number at a
time; the Prefect task `run_shard` runs one shard, writes its Parquet tables, then its done-marker.

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
from prefect.futures import as_completed, wait

from rasr import catalog, faults, manifest, storage
from rasr.catalog import Shard
from tasks import progress
from tasks.actors import ActorPool, WorkerLost, actor_pool, root_cause
from tasks.cluster import Cluster
from tasks.runtime import ray


# a batch whose worker died is sent to the next worker this many times before its shard fails
BATCH_RETRIES = 2


@task(name="run-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def run_shard(shard: dict, out: str, run_id: str, cfg_hash: str, pool: ActorPool, per_call: int,
              schemas: dict[str, pa.Schema], progress_key: str = "", planned_at: float = 0.0) -> dict:
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
            if _finished_since(out, s.id, planned_at):  # finished by a run we waited on
                progress.advance(progress_key, len(s.items))
                return _result(s, done_elsewhere=len(s.items))
            lease.keep_renewed()
        return _process(s, out, run_id, cfg_hash, pool, per_call, schemas, progress_key)
    finally:
        if lease is not None:
            lease.release()


def _finished_since(out: str, sid: str, planned_at: float) -> bool:
    """The shard's done-marker was written by another run after this run planned. An older marker is one
    the plan already read and chose to redo (inputs that failed for a reason that can pass): not done."""
    uri = catalog.done_marker_uri(out, sid)
    if not storage.exists(uri):
        return False
    try:
        finished = dt.datetime.fromisoformat(storage.read_json(uri)["finished_at"]).timestamp()
    except (KeyError, ValueError, TypeError):
        return True  # unreadable: trust that it is done, as before markers had times
    return finished >= planned_at


def _result(s: Shard, **extra) -> dict:
    return {"shard_id": s.id, "n": 0, **{k: 0 for k in manifest.STATUSES}, "rows": 0, "seconds": 0.0,
            "retried": 0, "deferred": 0, "done_elsewhere": 0, **extra}


def _process(s: Shard, out: str, run_id: str, cfg_hash: str, pool: ActorPool, per_call: int,
             schemas: dict[str, pa.Schema], progress_key: str) -> dict:
    t0 = time.perf_counter()
    items = [asdict(i) for i in s.items]
    batches = catalog.chunks(items, per_call)
    results: dict[int, dict[str, list[dict]]] = {}
    retried_total = 0
    try:
        for i, result, retried in pool.as_completed("process", [(b, out, s.id, run_id) for b in batches], BATCH_RETRIES):
            results[i] = result
            retried_total += retried
            if retried:
                for rows in result.values():
                    for r in rows:
                        if "notes" in r:
                            note = f"retried on another worker after a worker died ({retried}x)"
                            r["notes"] = f"{r['notes']}; {note}" if r.get("notes") else note
            errors = sum(r["status"] == "error" for r in result["manifest"])
            progress.advance(progress_key, len(batches[i]), **({"errors": errors} if errors else {}))
    except ray.exceptions.RayTaskError as e:  # the call raised (e.g. the store is unreachable)
        raise RuntimeError(f"shard {s.id}: {root_cause(e)}") from None
    except WorkerLost as e:  # the worker died mid-call on every try: its outputs are not trusted
        raise RuntimeError(f"shard {s.id}: batch {e.index} lost its worker {e.attempts} times: "
                           f"{root_cause(e.cause)}") from None
    tables = {name: [r for i in sorted(results) for r in results[i].get(name, [])] for name in schemas}
    rows = tables["manifest"]
    missing = {it["relpath"] for it in items} - {r["relpath"] for r in rows}
    if missing:  # a worker lost inputs: never mark such a shard done
        raise RuntimeError(f"shard {s.id}: no rows for {len(missing)} inputs, e.g. {sorted(missing)[0]}")
    for name, schema in schemas.items():
        faults.point("manifest-write")
        manifest.write_rows(manifest.shard_table_uri(out, name, s.id), tables[name], schema, catalog.temp_dir(out))
    counts = Counter(r["status"] for r in rows)
    status_of, retry_of, sha_of = {}, {}, {}
    for r in rows:  # an input counts as failed if any of its rows failed
        status_of[r["relpath"]] = "error" if "error" in (r["status"], status_of.get(r["relpath"])) else r["status"]
        if r["status"] == "error" and r.get("retry"):  # failed for a reason that can pass: the next run retries it
            retry_of[r["relpath"]] = True
        if r.get("sha256"):
            sha_of[r["relpath"]] = r["sha256"]
    marker = {
        "shard_id": s.id, "config_hash": cfg_hash, "run_id": run_id,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "counts": dict(counts), "seconds": round(time.perf_counter() - t0, 3),
        "items": [{"relpath": it["relpath"], "size": it["size"], "mtime": it["mtime"],
                   "status": status_of[it["relpath"]], "sha256": sha_of.get(it["relpath"]),
                   **({"retry": True} if retry_of.get(it["relpath"]) else {})} for it in items],
    }
    faults.point("marker-write")
    storage.write_json(catalog.done_marker_uri(out, s.id), marker, catalog.temp_dir(out))
    per_input = Counter(status_of.values())
    return {**_result(s), "n": len(items), **{k: per_input.get(k, 0) for k in manifest.STATUSES},
            "rows": len(rows), "seconds": marker["seconds"], "retried": retried_total}


def process_shards(actor_cls, cfg: dict, shards: list, out: str, run_id: str, cfg_hash: str, schemas: dict,
                   per_call: int, label: str, show_progress: bool, cluster: Cluster | None = None,
                   max_inflight: int | None = None, planned_at: float | None = None
                   ) -> tuple[list[dict], list[dict], list[dict]]:
    """Run `shards` with `actor_cls(cfg)` actors and a progress bar; returns (results, failures, placement).

    per_call: inputs sent to an actor per call. planned_at: when the plan read the done-markers (a marker
    written later is another run's work; default: now).
    At most `max_inflight` shards (default: workers + 1) are in flight, so a crash loses little work."""
    if not shards:
        return [], [], []
    storage.sweep_temp(catalog.temp_dir(out))  # leftovers of a killed earlier run
    catalog.sweep_leases(out)
    key = f"{label}-{run_id}"
    progress.start(key, sum(len(s.items) for s in shards), label, show_progress)
    try:
        with actor_pool(actor_cls, cfg, cluster=cluster) as pool:
            since = time.time() if planned_at is None else planned_at
            submit = lambda sh: run_shard.submit(sh.to_dict(), out, run_id, cfg_hash, pool,
                                                 per_call, schemas, key, since)
            results, failures = run_bounded(shards, submit, max_inflight or pool.spec.workers + 1)
            return results, failures, pool.placement
    finally:
        progress.close(key)


# shards failing one after another mean an outage (store unreachable, every worker failing), not bad
# inputs: stop starting new ones, so the run ends with one clear error instead of failing every shard
STOP_AFTER_FAILURES = 3


def run_bounded(shards: list, submit, limit: int) -> tuple[list[dict], list[dict]]:
    """Submit shard tasks keeping at most `limit` in flight (a crash then loses little work).

    Returns (results of finished shards, [{"error": ...}] of failed ones); one failure never stops
    the others."""
    results, failures, inflight = [], [], []
    streak = [0]  # shards failed in a row

    def collect(futures):
        for fut in futures:
            try:
                results.append(fut.result())
                streak[0] = 0
            except Exception as e:  # noqa: BLE001 - shards are independent
                failures.append({"error": storage.redact(f"{e.__class__.__name__}: {e}")})
                streak[0] += 1

    for started, shard in enumerate(shards):
        if streak[0] >= STOP_AFTER_FAILURES:  # the store or the workers are down: stop, the next run resumes
            failures.append({"error": f"stopped after {streak[0]} shards failed in a row, "
                                      f"{len(shards) - started} shards not started", "stopped": True})
            break
        if len(inflight) >= limit:
            first = next(as_completed(inflight))
            collect([first])
            inflight = [f for f in inflight if f is not first]
        inflight.append(submit(shard))
    collect(wait(inflight).done)
    return results, failures
