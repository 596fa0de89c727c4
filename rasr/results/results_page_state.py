"""What the results page remembers between runs, so a night adds its rows without reading the archive's.

report/data/state.json      the page's layout (rows, pages, runs, categories, key chunks), the row index's files
                            and the summary's running tallies: small, rewritten each run, the commit point
report/data/rows-*.parquet  the row index: per row its path, row number and what the summary counts, sorted by
                            path (rasr/rowsets.py): a night looks up only its own paths, to find the rows its
                            new rows supersede (an input enhanced again) and take them out of the tallies

The tallies are exact counts (status, generator, weights, encoder, config, gallery, references used, failure
reasons with three examples each) and histograms for the medians (similarity in steps of 0.001, time per image in
steps of 2%); the processed-from date is the earliest ever seen.
"""

from __future__ import annotations

import math
import secrets

import pyarrow as pa
import pyarrow.compute as pc

from rasr import rowsets, storage

VERSION = 2
STATE = "state.json"
INDEX_PREFIX = "rows-"
FACETS = ("generator", "weights_id", "encoder", "config_hash", "gallery")
MAX_REASONS = 200    # distinct failure reasons kept per status; the rest are counted under one line
EXAMPLES = 3
MS_STEP = math.log(1.02)

INDEX_SCHEMA = pa.schema([
    pa.field("relpath", pa.string()), pa.field("row", pa.int64()), pa.field("status", pa.string()),
    pa.field("error", pa.string()), pa.field("generator", pa.string()), pa.field("weights_id", pa.string()),
    pa.field("encoder", pa.string()), pa.field("config_hash", pa.string()), pa.field("gallery", pa.string()),
    pa.field("ref_used", pa.bool_()), pa.field("sim", pa.float64()), pa.field("ms", pa.float64()),
    pa.field("restore", pa.float64()), pa.field("at", pa.int64()),
])
OTHER_REASONS = "(other reasons)"


def empty(page_size: int) -> dict:
    return {"version": VERSION, "page_size": page_size, "rows": 0, "pages": 0, "superseded": 0, "runs": [],
            "cats": [], "index": [], "tally": {"status": {}, **{f: {} for f in FACETS}, "ref_used": 0, "sim": {},
                                               "ms": {}, "restore": {}, "first_at": None, "last_at": None,
                                               "fail": {"error": {}, "skipped": {}}}}


def read(report: str, page_size: int) -> dict | None:
    """The state of report/ (None: no page yet, or one of an earlier layout: it is rebuilt)."""
    uri = storage.join(report, "data", STATE)
    if not storage.exists(uri):
        return None
    state = storage.read_json(uri)
    return state if state.get("version") == VERSION and state.get("page_size") == page_size else None


def record(r: dict, row: int) -> dict:
    """A manifest row as the row index keeps it."""
    t = r.get("timings_ms") or {}
    sims = r.get("ref_similarities") or []
    return {"relpath": r["relpath"], "row": row, "status": r["status"], "error": r.get("error"),
            "generator": r.get("generator"), "weights_id": r.get("weights_id"), "encoder": r.get("encoder"),
            "config_hash": r.get("config_hash"),
            "gallery": f"{r['gallery_table']} v{r.get('gallery_version')}" if r.get("gallery_table") else None,
            "ref_used": bool(r.get("ref_used")), "sim": float(sims[0]) if sims else None,
            "ms": float(t["total"]) if t.get("total") else None,
            "restore": float(t["restore"]) if t.get("restore") else None,
            "at": round(r["processed_at"].timestamp()) if r.get("processed_at") is not None else None}


def _bump(d: dict, key, n: int) -> None:
    key = str(key)
    d[key] = d.get(key, 0) + n
    if d[key] <= 0:
        del d[key]


def tally(state: dict, rec: dict, sign: int) -> None:
    """Count a row in (sign 1) or out (sign -1: superseded by a newer row of the same input)."""
    t = state["tally"]
    _bump(t["status"], rec["status"], sign)
    if rec["status"] == "ok":
        for f in FACETS:
            if rec.get(f):
                _bump(t[f], rec[f], sign)
        t["ref_used"] += sign * bool(rec["ref_used"])
        if rec.get("sim") is not None:
            _bump(t["sim"], round(rec["sim"] * 1000), sign)
        for k in ("ms", "restore"):
            if rec.get(k):
                _bump(t[k], round(math.log(rec[k]) / MS_STEP), sign)
    elif rec["status"] in t["fail"]:
        reasons = t["fail"][rec["status"]]
        reason = rec.get("error") or "(no reason recorded)"
        if reason not in reasons and len(reasons) >= MAX_REASONS:
            reason = OTHER_REASONS
        n, examples = reasons.get(reason, [0, []])
        n += sign
        if sign > 0 and len(examples) < EXAMPLES:
            examples = [*examples, rec["relpath"]]
        elif sign < 0 and rec["relpath"] in examples:
            examples = [e for e in examples if e != rec["relpath"]]
        if n > 0:
            reasons[reason] = [n, examples]
        else:
            reasons.pop(reason, None)
    if sign > 0 and rec.get("at") is not None:
        t["first_at"] = rec["at"] if t["first_at"] is None else min(t["first_at"], rec["at"])
        t["last_at"] = rec["at"] if t["last_at"] is None else max(t["last_at"], rec["at"])


def hist_stats(hist: dict, decode) -> tuple[float, float, float] | None:
    """(median, min, max) of a histogram {bin: count}, each decoded from its bin."""
    if not hist:
        return None
    bins = sorted((int(k), n) for k, n in hist.items())
    total, seen = sum(n for _, n in bins), 0
    lower = upper = None
    for b, n in bins:  # the median of an even count: the mean of the two middle values, as numpy's
        if lower is None and seen + n >= (total + 1) // 2:
            lower = b
        if seen + n >= total // 2 + 1:
            upper = b
            break
        seen += n
    return (decode(lower) + decode(upper)) / 2, decode(bins[0][0]), decode(bins[-1][0])


def decode_sim(b: int) -> float:
    return b / 1000


def decode_ms(b: int) -> float:
    return math.exp(b * MS_STEP)


# ---- the row index ----------------------------------------------------------------------------------

def index_files(report: str, state: dict) -> tuple[object, list[tuple[str, int]]]:
    """(fs, [(path, bytes)]) of the index files the state names (no listing)."""
    fs, base = storage.filesystem(storage.join(report, "data"))
    return fs, [(f"{base.rstrip('/')}/{name}", size) for name, size in state["index"]]


def superseded(report: str, state: dict, relpaths: set[str]) -> list[dict]:
    """The newest committed record of each of `relpaths` the page already has (rows that a new row replaces)."""
    fs, files = index_files(report, state)
    table = rowsets.lookup(fs, files, relpaths, "relpath", storage.is_remote(report), INDEX_SCHEMA)
    newest: dict[str, dict] = {}
    for rec in table.to_pylist():
        if rec["row"] < state["rows"] and rec["row"] > newest.get(rec["relpath"], {"row": -1})["row"]:
            newest[rec["relpath"]] = rec
    return list(newest.values())


def write_index(report: str, state: dict, records: list[dict] | pa.Table, tmp: str | None) -> None:
    """A new index file of `records`, named in the state (committed when the state is written)."""
    table = records if isinstance(records, pa.Table) else pa.Table.from_pylist(records, schema=INDEX_SCHEMA)
    if not table.num_rows:
        return
    name = f"{INDEX_PREFIX}{pc.min(table.column('row')).as_py():012d}-{secrets.token_hex(4)}.parquet"
    uri = storage.join(report, "data", name)
    rowsets.write(uri, table, "relpath", tmp)
    fs, path = storage.filesystem(uri)
    state["index"].append([name, fs.size(path)])


def merge_index(report: str, state: dict, tmp: str | None) -> list[str]:
    """Merge the smallest index files when there are too many (size-tiered); returns the names it replaced, to be
    removed once the state naming the merged file is written."""
    chosen = rowsets.merge_choice([size for _, size in state["index"]])
    if not chosen:
        return []
    fs, files = index_files(report, state)
    table = rowsets.read_all(fs, [files[i] for i in chosen], storage.is_remote(report), INDEX_SCHEMA)
    names = [state["index"][i][0] for i in chosen]
    state["index"] = [e for i, e in enumerate(state["index"]) if i not in chosen]
    write_index(report, state, table, tmp)
    return names


def remove_index(report: str, names: list[str]) -> None:
    """Index files no state names any more (merged into another)."""
    fs, base = storage.filesystem(storage.join(report, "data"))
    for name in names:
        fs.rm(f"{base.rstrip('/')}/{name}")
