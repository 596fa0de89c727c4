"""Completed work of an OUTPUT, compacted: a night reads a few objects, not one per shard ever finished.

A finishing shard writes its done-marker (`_done/shard=<id>.json`) exactly as before: the crash rule holds (the
marker is written last, only when every row exists). Markers older than COMPACT_MIN_AGE_S are then rolled up, by
whichever run finishes next, into an immutable Parquet file (`_done/rollup-<time>-<random>.parquet`, one row per
input: shard_id, config_hash, run_id, finished_at, relpath, size, mtime, status, sha256, retry; sorted by relpath),
and when more than MAX_ROLLUPS exist they are merged into one. So `_done/` holds the last day's markers and at most
MAX_ROLLUPS + 1 rollups, however large the archive.

Why nothing is lost, whatever crashes or runs at once:
- a file is deleted only by the compaction that wrote a rollup holding its rows, after that rollup is complete
  (a crash in between leaves duplicates, which readers fold: per shard, the latest finished_at wins);
- compactions (and gc's edits of the state) hold one lease (`_leases/compact.json`), so two never interleave;
  without conditional writes (stores other than local folders and s3://) nothing is compacted;
- a reader lists once and reads what it listed; a file removed in between is in a rollup written before the
  removal, so the reader lists again (a few attempts);
- markers younger than a day stay loose: a run that waited on another run's shard lease checks that shard's own
  marker (`_finished_since`), which no compaction has taken yet.

Readers can ask only for one config and for a set of paths (`--input-list` nights): rollups are filtered by
pyarrow on their sorted `relpath` column, so such a night reads row groups, not every row.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from rasr import catalog, storage

ROLLUP_PREFIX = "rollup-"
COMPACT_MIN_AGE_S = float(os.environ.get("RASR_COMPACT_MIN_AGE", 86400))  # markers younger than this stay loose
COMPACT_MIN_MARKERS = 16   # fewer old markers than this: not worth a file
MAX_ROLLUPS = 8            # more rollups than this: merged into one
READ_ATTEMPTS = 5

SCHEMA = pa.schema([
    pa.field("shard_id", pa.string()), pa.field("config_hash", pa.string()), pa.field("run_id", pa.string()),
    pa.field("finished_at", pa.string()), pa.field("relpath", pa.string()), pa.field("size", pa.int64()),
    pa.field("mtime", pa.string()), pa.field("status", pa.string()), pa.field("sha256", pa.string()),
    pa.field("retry", pa.bool_()),
])


def _files(out: str) -> tuple[list[str], list[str], object]:
    """(marker paths, rollup paths, fs) under <out>/_done: one listing."""
    fs, base = storage.filesystem(storage.join(out, catalog.DONE_DIR))
    if not fs.exists(base):
        return [], [], fs
    names = fs.ls(base, detail=False)
    markers = sorted(p for p in names if p.rsplit("/", 1)[-1].startswith("shard=") and p.endswith(".json"))
    rollups = sorted(p for p in names if p.rsplit("/", 1)[-1].startswith(ROLLUP_PREFIX) and p.endswith(".parquet"))
    return markers, rollups, fs


def _read_all(fs, paths: list[str], remote: bool) -> dict[str, bytes]:
    if not paths:
        return {}
    if remote:
        return fs.cat(paths)  # fetched concurrently
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(paths, pool.map(lambda p: open(p, "rb").read(), paths)))


def _rollup_rows(data: bytes, config_hash: str | None, relpaths: set[str] | None) -> pa.Table:
    """The rows of one rollup for `config_hash` and `relpaths` (None: all), read a row group at a time: memory
    follows the rows kept, not the rollup's size."""
    import pyarrow.compute as pc

    wanted = pa.array(sorted(relpaths), pa.string()) if relpaths is not None else None
    kept = []
    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=65536):
        mask = None
        if config_hash is not None:
            mask = pc.equal(batch.column("config_hash"), config_hash)
        if wanted is not None:
            inside = pc.is_in(batch.column("relpath"), value_set=wanted)
            mask = inside if mask is None else pc.and_(mask, inside)
        batch = batch if mask is None else batch.filter(mask)
        if batch.num_rows:
            kept.append(batch)
    return pa.Table.from_batches(kept, schema=SCHEMA) if kept else SCHEMA.empty_table()


def _markers_from_rows(table: pa.Table) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in table.to_pylist():
        m = out.setdefault(r["shard_id"], {"shard_id": r["shard_id"], "config_hash": r["config_hash"],
                                           "run_id": r["run_id"], "finished_at": r["finished_at"], "items": []})
        it = {"relpath": r["relpath"], "size": r["size"], "mtime": r["mtime"], "status": r["status"],
              "sha256": r["sha256"]}
        if r["retry"]:
            it["retry"] = True
        m["items"].append(it)
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

    for data in _read_all(fs, rollups, remote).values():
        for m in _markers_from_rows(_rollup_rows(data, config_hash, relpaths)).values():
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


def _write_rollup(out: str, rows: list[dict]) -> str:
    rows.sort(key=lambda r: (r["relpath"], r["shard_id"] or ""))
    name = f"{ROLLUP_PREFIX}{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.parquet"
    uri = storage.join(out, catalog.DONE_DIR, name)
    # row groups of 64k rows: readers filter a group at a time (`_rollup_rows`)
    storage.write_parquet(uri, rows, SCHEMA, catalog.temp_dir(out), compression="zstd", row_group_size=65536)
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
    if len(rollups) > MAX_ROLLUPS:
        merged = []
        for data in _read_all(fs, rollups, remote).values():
            merged += pq.read_table(io.BytesIO(data), schema=SCHEMA).to_pylist()
        _write_rollup(out, merged)
        fs.rm(sorted(rollups))
        done["rollups_merged"] = len(rollups)
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
        for path, data in _read_all(fs, rollups, remote).items():
            rows = pq.read_table(io.BytesIO(data), schema=SCHEMA).to_pylist()
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
