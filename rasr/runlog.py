"""Run summaries: <out>/runs/<run_id>.parquet, one row per run, readable as one table."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.parquet as pq

from rasr import storage
from rasr.catalog import RUNS_DIR


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


def read_runs(out: str) -> pa.Table:
    """Every run summary under <out>/runs, oldest first."""
    fs, base = storage.filesystem(storage.join(out, RUNS_DIR))
    if not fs.exists(base):
        return pa.table({})
    tables = []
    for path in sorted(p for p in fs.find(base) if p.endswith(".parquet")):
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
