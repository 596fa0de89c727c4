"""Run summaries: <out>/runs/<run_id>.parquet, one row per run, readable as one table."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from rasr import storage
from rasr.catalog import RUNS_DIR


def new_run_id() -> str:
    """Sortable, unique: 20261126T020000Z-1a2b3c."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def write_run(out: str, summary: dict) -> str:
    """Write one run's summary; nested values (config, lists) are stored as JSON text."""
    row = {}
    for k, v in summary.items():
        if isinstance(v, (dict, list, tuple)):
            row[k] = json.dumps(v, sort_keys=True, default=str)
        elif isinstance(v, dt.datetime) or v is None or isinstance(v, (int, float, str, bool)):
            row[k] = v
        else:
            row[k] = str(v)
    row["finished_at"] = dt.datetime.now(dt.timezone.utc)
    uri = storage.join(out, RUNS_DIR, f"{summary['run_id']}.parquet")
    storage.write_parquet(uri, [row])
    return uri


def _run_tables(out: str, last: int | None = None) -> tuple[list[pa.Table], int]:
    """The run summary tables under <out>/runs, oldest first (run ids sort by start time), only the
    `last` ones when given, and how many runs there are in all."""
    fs, base = storage.filesystem(storage.join(out, RUNS_DIR))
    files = sorted(p for p in fs.find(base) if p.endswith(".parquet")) if fs.exists(base) else []
    tables = []
    for path in files[-last:] if last else files:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return tables, len(files)


def read_runs(out: str) -> pa.Table:
    """Every run summary under <out>/runs, oldest first."""
    tables, _ = _run_tables(out)
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def latest_runs(out: str, n: int = 10) -> tuple[list[dict], int]:
    """The newest `n` run summaries as dicts (each with its own fields), newest first, and how many
    runs there are (years of nightly runs are not all read)."""
    tables, total = _run_tables(out, n)
    runs = [row for t in tables for row in t.to_pylist()]
    return sorted(runs, key=lambda r: str(r.get("finished_at") or r.get("run_id")), reverse=True), total


# The nightly watermark: when the last *completed* night listed its inputs. It lives in the output location, not
# in Prefect's database, so it survives a new Prefect server and is visible to anyone reading the outputs.
WATERMARK = "_state/watermark.json"


def read_watermark(out: str) -> dict | None:
    uri = storage.join(out, WATERMARK)
    return storage.read_json(uri) if storage.exists(uri) else None


def write_watermark(out: str, listed_at: float, summary: dict, previous: dict | None) -> None:
    """Move the watermark to `listed_at` after a completed run (a failed run leaves it: the next night retries)."""
    storage.write_json(storage.join(out, WATERMARK), {
        "listed_at": listed_at, "listed_at_iso": dt.datetime.fromtimestamp(listed_at, dt.timezone.utc).isoformat(),
        "run_id": summary["run_id"], "processed": summary["processed"], "failed": summary["failed"],
        "previous": previous and {k: previous[k] for k in ("listed_at_iso", "run_id")}})
