"""Completed work of an OUTPUT, compacted: a night reads a few objects, not one per shard ever finished.

A finishing shard writes its done-marker (`_done/shard=<id>.json`) exactly as before: the crash rule holds (the
marker is written last, only when every row exists). Markers older than COMPACT_MIN_AGE_S are then rolled up, by
whichever run finishes next, into an immutable Parquet file (`_done/rollup-<time>-<random>.parquet`, one row per
input: shard_id, config_hash, run_id, finished_at, relpath, size, mtime, status, sha256, retry; sorted by relpath),
and when more than MAX_ROLLUPS exist the smallest are merged (size-tiered, rasr/rowsets.py: a merge never rewrites
the whole archive's state at once). So `_done/` holds the last day's markers and at most MAX_ROLLUPS + 1 rollups,
however large the archive.

Why nothing is lost, whatever crashes or runs at once:
- a file is deleted only by the compaction that wrote a rollup holding its rows, after that rollup is complete
  (a crash in between leaves duplicates, which readers fold: per shard, the latest finished_at wins);
- compactions (and gc's edits of the state) hold one lease (`_leases/compact.json`), so two never interleave;
  without conditional writes (stores other than local folders and s3://) nothing is compacted;
- a reader lists once and reads what it listed; a file removed in between is in a rollup written before the
  removal, so the reader lists again (a few attempts);
- markers younger than a day stay loose: a run that waited on another run's shard lease checks that shard's own
  marker (`_finished_since`), which no compaction has taken yet.

Readers can ask only for one config and for a set of paths (`--input-list` nights): rollups are sorted by
`relpath`, and such a night reads their footers and the row groups whose path range holds one of its paths
(ranged GETs on S3), not every row.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from rasr import catalog, rowsets, storage

ROLLUP_PREFIX = "rollup-"
COMPACT_MIN_AGE_S = float(os.environ.get("RASR_COMPACT_MIN_AGE", 86400))  # markers younger than this stay loose
COMPACT_MIN_MARKERS = 16   # fewer old markers than this: not worth a file
MAX_ROLLUPS = rowsets.MAX_FILES  # more rollups than this: the smallest merged (size-tiered)
READ_ATTEMPTS = 5

SCHEMA = pa.schema([
    pa.field("shard_id", pa.string()), pa.field("config_hash", pa.string()), pa.field("run_id", pa.string()),
    pa.field("finished_at", pa.string()), pa.field("relpath", pa.string()), pa.field("size", pa.int64()),
    pa.field("mtime", pa.string()), pa.field("status", pa.string()), pa.field("sha256", pa.string()),
    pa.field("retry", pa.bool_()),
])


def _files(out: str) -> tuple[list[str], list[tuple[str, int]], object]:
    """(marker paths, [(rollup path, bytes)], fs) under <out>/_done: one listing."""
    fs, base = storage.filesystem(storage.join(out, catalog.DONE_DIR))
    if not fs.exists(base):
        return [], [], fs
    entries = fs.ls(base, detail=True)
    name = lambda e: e["name"].rsplit("/", 1)[-1]
    markers = sorted(e["name"] for e in entries if name(e).startswith("shard=") and name(e).endswith(".json"))
    rollups = sorted((e["name"], int(e.get("size") or 0)) for e in entries
                     if name(e).startswith(ROLLUP_PREFIX) and name(e).endswith(".parquet"))
    return markers, rollups, fs


def _read_all(fs, paths: list[str], remote: bool) -> dict[str, bytes]:
    if not paths:
        return {}
    if remote:
        return fs.cat(paths)  # fetched concurrently
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(paths, pool.map(lambda p: open(p, "rb").read(), paths)))


def _rollup_rows(fs, rollups: list[tuple[str, int]], remote: bool, config_hash: str | None,
                 relpaths: set[str] | None) -> pa.Table:
    """The rows of the rollups for `config_hash` and `relpaths` (None: all); with relpaths, only the row groups
    whose relpath range holds one are read (rasr/rowsets.py)."""
    if relpaths is not None:
        table = rowsets.lookup(fs, rollups, relpaths, "relpath", remote, SCHEMA)
    else:
        table = rowsets.read_all(fs, rollups, remote, SCHEMA)
    if config_hash is not None and table.num_rows:
        table = table.filter(pc.equal(table.column("config_hash"), config_hash))
    return table


def _markers_from_rows(table: pa.Table) -> dict[str, dict]:
    """Markers from rollup rows; a shard in several rollups (a crash between a rollup and its removals, then a
    later rollup of the same markers) is its newest version, each item once."""
    out: dict[str, dict] = {}
    for r in table.to_pylist():
        m = out.get(r["shard_id"])
        at = str(r["finished_at"] or "")
        if m is None or at > str(m["finished_at"] or ""):
            m = out[r["shard_id"]] = {"shard_id": r["shard_id"], "config_hash": r["config_hash"],
                                      "run_id": r["run_id"], "finished_at": r["finished_at"], "items": [],
                                      "_seen": set()}
        elif at < str(m["finished_at"] or "") or r["relpath"] in m["_seen"]:
            continue
        it = {"relpath": r["relpath"], "size": r["size"], "mtime": r["mtime"], "status": r["status"],
              "sha256": r["sha256"]}
        if r["retry"]:
            it["retry"] = True
        m["items"].append(it)
        m["_seen"].add(r["relpath"])
    for m in out.values():
        del m["_seen"]
    return out


def read(out: str, config_hash: str | None = None, relpaths: set[str] | None = None) -> list[dict]:
    """Every finished shard's marker (loose or rolled up), newest version per shard; only those of `config_hash`
    and only the items in `relpaths` when given."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return _read(out, config_hash, relpaths)
        except FileNotFoundError:  # compacted between our listing and our read: it is in a rollup now
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return []


def _read(out: str, config_hash: str | None, relpaths: set[str] | None) -> list[dict]:
    markers, rollups, fs = _files(out)
    remote = storage.is_remote(out)
    by_shard: dict[str, dict] = {}

    def keep(m: dict) -> None:
        old = by_shard.get(m["shard_id"])
        if old is None or str(m.get("finished_at") or "") >= str(old.get("finished_at") or ""):
            by_shard[m["shard_id"]] = m

    for m in _markers_from_rows(_rollup_rows(fs, rollups, remote, config_hash, relpaths)).values():
        keep(m)
    for path, data in _read_all(fs, markers, remote).items():
        m = json.loads(data)
        m.setdefault("shard_id", _shard_of(path))
        if config_hash is not None and m.get("config_hash") != config_hash:
            continue
        if relpaths is not None:
            m = {**m, "items": [it for it in m.get("items", []) if it["relpath"] in relpaths]}
        keep(m)
    return list(by_shard.values())


def _rows_of(marker: dict) -> list[dict]:
    return [{"shard_id": marker.get("shard_id"), "config_hash": marker.get("config_hash"),
             "run_id": marker.get("run_id"), "finished_at": marker.get("finished_at"), "relpath": it["relpath"],
             "size": int(it["size"]), "mtime": str(it["mtime"]), "status": it.get("status"),
             "sha256": it.get("sha256"), "retry": bool(it.get("retry"))} for it in marker.get("items", [])]


def _write_rollup(out: str, rows: list[dict] | pa.Table) -> str:
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=SCHEMA)
    name = f"{ROLLUP_PREFIX}{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.parquet"
    uri = storage.join(out, catalog.DONE_DIR, name)
    rowsets.write(uri, table, "relpath", catalog.temp_dir(out))  # sorted, row groups readers can skip
    return uri


def _shard_of(path: str) -> str:
    """The shard id a marker's path names (<out>/_done/shard=<id>.json)."""
    return path.rsplit("/", 1)[-1][len("shard="):-len(".json")]


def _lease(out: str, run_id: str):
    from rasr.locks import Lease

    if storage.is_remote(out) and not out.startswith("s3://"):
        return None
    return Lease(storage.join(out, catalog.LEASE_DIR, "compact.json"), ttl=catalog.LEASE_TTL, run_id=run_id)


def compact(out: str, run_id: str = "compact", now: float | None = None, min_age: float | None = None) -> dict:
    """Roll markers older than `min_age` into a rollup, merge rollups beyond MAX_ROLLUPS; returns what it did.
    Skipped (and said so) when another run compacts or the store has no conditional writes."""
    lease = _lease(out, run_id)
    if lease is None:
        return {"skipped": "no conditional writes on this store"}
    if not lease.acquire():
        return {"skipped": "another run is compacting"}
    try:
        return _compact(out, time.time() if now is None else now, COMPACT_MIN_AGE_S if min_age is None else min_age)
    finally:
        lease.release()


def _finished(m: dict) -> float:
    try:
        return dt.datetime.fromisoformat(m["finished_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return 0.0  # no time: old enough


def _compact(out: str, now: float, min_age: float) -> dict:
    markers, rollups, fs = _files(out)
    remote = storage.is_remote(out)
    done = {"markers_rolled": 0, "rollups_merged": 0}
    if markers:
        blobs = _read_all(fs, markers, remote)
        old = {p: json.loads(b) for p, b in blobs.items()}
        old = {p: m for p, m in old.items() if _finished(m) <= now - min_age}
        if len(old) >= COMPACT_MIN_MARKERS:
            rows = []
            for p, m in old.items():
                m.setdefault("shard_id", _shard_of(p))
                rows += _rows_of(m)
            _write_rollup(out, rows)
            fs.rm(sorted(old))  # only now: their rows are in a complete rollup (on S3: 1,000 per request)
            done["markers_rolled"] = len(old)
            rollups = _files(out)[1]
    chosen = [rollups[i] for i in rowsets.merge_choice([size for _, size in rollups], MAX_ROLLUPS)]
    if chosen:
        _write_rollup(out, rowsets.read_all(fs, chosen, remote, SCHEMA))
        fs.rm(sorted(p for p, _ in chosen))
        done["rollups_merged"] = len(chosen)
    return done


def rewrite(out: str, drop: dict[str, set[str]], run_id: str = "gc") -> int:
    """Remove the items `drop` ({shard_id: relpaths}) from the state (loose markers and rollups), under the
    compaction lease; returns the items removed. gc uses it for inputs that no longer exist."""
    lease = _lease(out, run_id)
    if lease is not None and not lease.acquire():
        raise RuntimeError("another run is compacting the run state: run gc again in a minute")
    try:
        markers, rollups, fs = _files(out)
        remote = storage.is_remote(out)
        removed = 0
        for path, data in _read_all(fs, markers, remote).items():
            sid = _shard_of(path)
            if sid not in drop:
                continue
            m = json.loads(data)
            keep = [it for it in m.get("items", []) if it["relpath"] not in drop[sid]]
            removed += len(m.get("items", [])) - len(keep)
            m["items"] = keep
            storage.write_json(storage.protocol_prefix(out) + path if remote else path, m, catalog.temp_dir(out))
        for path, size in rollups:
            rows = rowsets.read_all(fs, [(path, size)], remote, SCHEMA).to_pylist()
            keep = [r for r in rows if r["relpath"] not in drop.get(r["shard_id"], ())]
            if len(keep) == len(rows):
                continue
            removed += len(rows) - len(keep)
            if keep:
                _write_rollup(out, keep)
            fs.rm(path)
        return removed
    finally:
        if lease is not None:
            lease.release()
