"""The compacted run state (rasr/runstate.py) and the inputs of a night (--input-list, one listing per run).

Markers are written here as the shard task writes them (JSON under OUTPUT/_done); what a reader must get back is
those markers, compared with the test's own copies, whatever was compacted, crashed or ran at the same time."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os

import pytest

from rasr import catalog, runstate, storage
from rasr.restoration.enhance_run import EnhanceConfig, plan


def _marker(i: int, age_days: float, cfg: str = "cfgA", n: int = 3) -> dict:
    at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=age_days)
    return {"shard_id": f"s{i:04d}", "config_hash": cfg, "run_id": f"r{i}", "finished_at": at.isoformat(),
            "items": [{"relpath": f"d{i}/p{k}.png", "size": 100 + k, "mtime": f"{1000 + i}.000000",
                       "status": "error" if k == 2 else "ok", "sha256": f"{i:04d}{k:060d}",
                       **({"retry": True} if k == 2 and i % 2 else {})} for k in range(n)]}


def _write(out: str, markers: list[dict]) -> None:
    for m in markers:
        storage.write_json(catalog.done_marker_uri(out, m["shard_id"]), m)


def _canon(markers: list[dict]) -> dict:
    """shard -> (config, sorted items) with each item's fields as the shard task writes them."""
    return {m["shard_id"]: (m["config_hash"], sorted(
        (it["relpath"], int(it["size"]), str(it["mtime"]), it["status"], it["sha256"], bool(it.get("retry")))
        for it in m["items"])) for m in markers}


@pytest.fixture
def state(tmp_path):
    out = str(tmp_path / "out")
    old = [_marker(i, 2.0) for i in range(40)]
    new = [_marker(i, 0.01) for i in range(40, 45)]
    _write(out, old + new)
    return out, old, new


def _files(out: str) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(os.path.join(out, catalog.DONE_DIR)))
    return [n for n in names if n.startswith("shard=")], [n for n in names if n.startswith(runstate.ROLLUP_PREFIX)]


def test_compaction_rolls_old_markers_into_one_file_and_reads_back_the_same(state):
    out, old, new = state
    before = _canon(catalog.done_markers(out))
    assert before == _canon(old + new)
    did = runstate.compact(out, "r-test")
    assert did == {"markers_rolled": 40, "rollups_merged": 0}
    markers, rollups = _files(out)
    assert len(rollups) == 1 and sorted(markers) == sorted(f"shard={m['shard_id']}.json" for m in new)
    assert _canon(catalog.done_markers(out)) == before
    # what a plan derives from it is the same
    assert catalog.covered(catalog.done_markers(out), "cfgA") == catalog.covered(old + new, "cfgA")
    # filtered reads: one config, a few paths (an --input-list night)
    few = {"d3/p1.png", "d42/p0.png", "nowhere.png"}
    got = catalog.done_markers(out, "cfgA", few)
    assert sorted(it["relpath"] for m in got for it in m["items"]) == ["d3/p1.png", "d42/p0.png"]
    assert catalog.done_markers(out, "other-config") == []


def test_rollups_beyond_the_limit_are_merged(tmp_path):
    out = str(tmp_path / "out")
    everything = []
    for batch in range(runstate.MAX_ROLLUPS + 1):
        ms = [_marker(batch * 100 + i, 3.0) for i in range(runstate.COMPACT_MIN_MARKERS)]
        everything += ms
        _write(out, ms)
        runstate.compact(out)
    assert len(_files(out)[1]) == 1  # the ninth rollup made them merge
    assert _canon(catalog.done_markers(out)) == _canon(everything)


def test_a_crash_between_rollup_and_removal_loses_nothing_and_doubles_nothing(state, monkeypatch):
    out, old, new = state
    fs, _ = storage.filesystem(out)
    real_rm = type(fs).rm
    calls = []

    def dying_rm(self, path, *a, **k):
        paths = path if isinstance(path, list) else [path]
        for p in paths[:4]:
            real_rm(self, p)
        calls.append(paths)
        raise KeyboardInterrupt("killed")  # the process dies after 4 removals

    monkeypatch.setattr(type(fs), "rm", dying_rm)
    with pytest.raises(KeyboardInterrupt):
        runstate._compact(out, dt.datetime.now().timestamp(), runstate.COMPACT_MIN_AGE_S)
    monkeypatch.undo()
    assert len(_files(out)[0]) == 41  # 36 old markers left beside the complete rollup holding them
    assert _canon(catalog.done_markers(out)) == _canon(old + new)  # duplicates folded
    runstate.compact(out)  # the next run finishes the job
    assert _canon(catalog.done_markers(out)) == _canon(old + new)
    assert len(_files(out)[0]) == 5


def test_a_reader_whose_listing_was_compacted_away_reads_again(state, monkeypatch):
    out, old, new = state
    real = runstate._read_all
    once = []

    def racing(fs, paths, remote):
        if not once and any("shard=" in p for p in paths):
            once.append(1)
            runstate.compact(out, "other-run")  # another run compacts between our listing and our reads
        return real(fs, paths, remote)

    monkeypatch.setattr(runstate, "_read_all", racing)
    assert _canon(catalog.done_markers(out)) == _canon(old + new)
    assert once


def test_one_compaction_at_a_time(state):
    out, *_ = state
    held = runstate._lease(out, "holder")
    assert held.acquire()
    try:
        assert runstate.compact(out, "second") == {"skipped": "another run is compacting"}
        assert len(_files(out)[0]) == 45
    finally:
        held.release()


def test_gc_rewrite_removes_entries_from_markers_and_rollups(state):
    out, old, new = state
    runstate.compact(out)
    drop = {"s0003": {"d3/p0.png"}, "s0041": {"d41/p1.png", "d41/p2.png"}}
    assert runstate.rewrite(out, drop) == 3
    got = _canon(catalog.done_markers(out))
    want = _canon(old + new)
    want["s0003"] = (want["s0003"][0], [x for x in want["s0003"][1] if x[0] != "d3/p0.png"])
    want["s0041"] = (want["s0041"][0], [x for x in want["s0041"][1] if x[0] == "d41/p0.png"])
    assert got == want


# ---- the inputs of a night -------------------------------------------------------------------------------------

@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    for rel in ("a/1.png", "a/2.png", "b/3.png", ".hidden/4.png"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (10 + len(rel)))
    return root


def test_input_list_names_what_the_listing_would_find(archive, tmp_path):
    listed = {i.relpath: i for i in catalog.list_inputs(str(archive))}
    keys = tmp_path / "new.txt"
    keys.write_text(f"# tonight\na/2.png\n\n{archive}/b/3.png\nmissing.png\n")
    items = {i.relpath: i for i in catalog.read_input_list(str(archive), str(keys))}
    assert set(items) == {"a/2.png", "b/3.png", "missing.png"}
    for rel in ("a/2.png", "b/3.png"):  # size and mtime as the listing sees them: the same shard names
        assert (items[rel].size, items[rel].mtime, items[rel].status) == (listed[rel].size, listed[rel].mtime, "")
        assert items[rel].size == os.stat(archive / rel).st_size
    assert items["missing.png"].status == "error" and "--input-list" in items["missing.png"].reason
    keys.write_text("../outside.png\n")
    with pytest.raises(ValueError, match="not under"):
        catalog.read_input_list(str(archive), str(keys))


def test_s3_inventory_report_is_read_without_a_request_per_key(tmp_path):
    """A local copy of an S3 Inventory report (CSV, gzip): <config>/<date>/manifest.json and <config>/data/."""
    report = tmp_path / "inv" / "bucket" / "cfg"
    (report / "2026-12-05T01-00Z").mkdir(parents=True)
    (report / "data").mkdir()
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL)
    w.writerow(["bucket", "archive/a/1.png", "14", "2026-12-05T00:10:00.000Z"])
    w.writerow(["bucket", "archive/b/3.png", "17", "2026-12-05T00:20:00.000Z"])
    w.writerow(["bucket", "elsewhere/x.png", "9", "2026-12-05T00:30:00.000Z"])
    (report / "data" / "part-0.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    manifest = {"sourceBucket": "bucket", "destinationBucket": "arn:aws:s3:::inv", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, Size, LastModifiedDate",
                "files": [{"key": "bucket/cfg/data/part-0.csv.gz", "size": 1, "MD5checksum": "-"}]}
    mpath = report / "2026-12-05T01-00Z" / "manifest.json"
    mpath.write_text(json.dumps(manifest))
    got = catalog.read_input_list("s3://bucket/archive", str(mpath))  # no request: the report has size and time
    assert [(i.uri, i.relpath, i.size) for i in got] == [("s3://bucket/archive/a/1.png", "a/1.png", 14),
                                                         ("s3://bucket/archive/b/3.png", "b/3.png", 17)]
    stamp = dt.datetime.fromisoformat("2026-12-05T00:10:00.000+00:00").timestamp()
    assert float(got[0].mtime) == pytest.approx(stamp)  # as s3fs's LastModified gives it to the listing


def test_a_plan_from_an_input_list_plans_only_the_listed_inputs(archive, tmp_path):
    out = str(tmp_path / "out")
    cfg = EnhanceConfig(generator="bicubic")
    whole = plan(cfg, str(archive), out)
    assert sorted(i.relpath for i in whole.items) == [".hidden", "a/1.png", "a/2.png", "b/3.png"]
    keys = tmp_path / "new.txt"
    keys.write_text("a/2.png\n")
    tonight = plan(EnhanceConfig(generator="bicubic", input_list=str(keys)), str(archive), out)
    assert [i.relpath for s in tonight.shards for i in s.items] == ["a/2.png"]
    # the same input through the listing and through the list makes the same shard: one run state for both
    listed = plan(cfg, str(archive), out, items=[i for i in whole.items if i.relpath == "a/2.png"])
    assert listed.shards[0].id == tonight.shards[0].id


def test_the_readmes_duckdb_queries_read_the_manifest_and_the_run_state(state, monkeypatch):
    """The SQL the README gives, run by DuckDB from the OUTPUT folder: the newest row per input as
    rasr.manifest.read_manifest returns it, and the rolled-up run state's counts as the markers hold them."""
    import re

    import duckdb

    from rasr import manifest

    out, old, new = state
    runstate.compact(out)
    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    rows = []
    for k, (rel, status, sec) in enumerate([("a.png", "error", 0), ("b.png", "ok", 1), ("a.png", "ok", 9)]):
        r = manifest.empty_row()
        r.update(source_uri=f"/in/{rel}", relpath=rel, status=status, run_id=f"r{k}", shard_id=f"s{k}",
                 processed_at=t0 + dt.timedelta(seconds=sec))
        rows.append(r)
        manifest.write_rows(manifest.shard_table_uri(out, catalog.MANIFEST_DIR, f"s{k}"), [r])
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    sql = re.search(r"```sql\n(.*?)```", readme, re.S).group(1)
    newest, counts = [q for q in sql.split(";") if "SELECT" in q]  # comments and all, as a user pastes them
    monkeypatch.chdir(out)
    got = duckdb.sql(newest)
    got = [dict(zip(got.columns, g)) for g in got.fetchall()]
    want = manifest.read_manifest(out).to_pylist()
    assert sorted((g["relpath"], g["status"], g["run_id"]) for g in got) == sorted(
        (r["relpath"], r["status"], r["run_id"]) for r in want) == [("a.png", "ok", "r2"), ("b.png", "ok", "r1")]
    by_status = dict(duckdb.sql(counts).fetchall())
    rolled = [it for m in old for it in m["items"]]  # the 40 old markers, rolled up; the 5 new ones stay loose
    assert by_status == {s: sum(it["status"] == s for it in rolled) for s in {"ok", "error"}}
