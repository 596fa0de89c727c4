"""Nothing lost between runs (issue 22), tried as the archivist of the issue did: `rasr enhance --generator
bicubic` on tiny photos, run as users run it (subprocesses of the entry point), again and again."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rasr.restoration import enhance_run
from rasr.manifest import read_manifest
from rasr.samples import as_rgb, load_photo, photo_names
from tests.flows.test_cli import summary_of

RASR = [sys.executable, "-m", "flows.cli"]
BICUBIC = ["--generator", "bicubic"]


@pytest.fixture(scope="module")
def env(prefect_harness, ray_session) -> dict:
    """CLI subprocesses join the session's Prefect API and Ray (as tests/flows/test_cli.py's)."""
    import ray

    return {**os.environ, "PREFECT_API_URL": prefect_harness, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def rasr(env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*RASR, *args], capture_output=True, text=True, timeout=timeout, env=env)


def photos(folder, names=("q0.png", "q1.png"), offset: int = 0, size=(24, 20)) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(names):
        photo = as_rgb(load_photo(photo_names()[(i + offset) % len(photo_names())]))
        Image.fromarray(photo).resize(size).save(os.path.join(folder, name))


def rows_by_name(out) -> dict[str, dict]:
    return {r["relpath"]: r for r in read_manifest(str(out)).to_pylist()}


# ---- 1. an OUTPUT belongs to one INPUT ------------------------------------------------------------------------

def test_a_second_input_into_the_same_output_is_refused(env, tmp_path):
    photos(tmp_path / "inA")
    photos(tmp_path / "inB", offset=5)  # the same names, other photos
    out = tmp_path / "out"
    a = rasr(env, "enhance", str(tmp_path / "inA"), str(out), *BICUBIC)
    assert a.returncode == 0, a.stderr
    before = {n: (out / "images" / f"{n}.png").read_bytes() for n in ("q0.png", "q1.png")}
    b = rasr(env, "enhance", str(tmp_path / "inB"), str(out), *BICUBIC)
    assert b.returncode == 2
    assert str(tmp_path / "inA") in b.stderr and str(tmp_path / "inB") in b.stderr and "--nest-by-input" in b.stderr
    assert {n: (out / "images" / f"{n}.png").read_bytes() for n in before} == before  # nothing overwritten
    assert all(r["source_uri"].startswith(str(tmp_path / "inA")) for r in rows_by_name(out).values())
    # asked for explicitly: each input gets its own folder under OUTPUT, both kept
    nested = tmp_path / "shared"
    for name in ("inA", "inB"):
        r = rasr(env, "enhance", str(tmp_path / name), str(nested), *BICUBIC, "--nest-by-input")
        assert r.returncode == 0, r.stderr
    subs = sorted(os.listdir(nested))
    assert [s.split("-")[0] for s in subs] == ["inA", "inB"]
    for sub, name in zip(subs, ("inA", "inB")):
        got = rows_by_name(nested / sub)
        assert sorted(got) == ["q0.png", "q1.png"] and all(name in r["source_uri"] for r in got.values())


def test_two_inputs_starting_together_one_wins(env, tmp_path):
    photos(tmp_path / "inA")
    photos(tmp_path / "inB", offset=5)
    out = tmp_path / "out"
    procs = [subprocess.Popen([*RASR, "enhance", str(tmp_path / n), str(out), *BICUBIC], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in ("inA", "inB")]
    codes = sorted(p.wait(timeout=300) for p in procs)
    assert codes == [0, 2]
    owner = json.loads((out / "_input.json").read_text())["input"]
    rows = rows_by_name(out)
    assert sorted(rows) == ["q0.png", "q1.png"] and all(r["source_uri"].startswith(owner) for r in rows.values())
    # the claim itself, raced by 8 threads 20 times: exactly one input wins each time
    for k in range(20):
        target, wins = str(tmp_path / f"race{k}"), []

        def claim(i, target=target, wins=wins):
            try:
                enhance_run.claim_output(str(tmp_path / f"in{i}"), target)
                wins.append(i)
            except enhance_run.UsageError:
                pass

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1


# ---- 2. failed inputs are retried -----------------------------------------------------------------------------

def test_a_failed_write_is_retried_and_no_stale_output_passes_for_new(env, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    photos(inp)
    (inp / "broken.png").write_bytes(b"not a png at all")  # a verdict that stays: not an image
    assert rasr(env, "enhance", str(inp), str(out), *BICUBIC).returncode == 3
    old = (out / "images" / "q0.png.png").read_bytes()
    photos(inp, names=("q0.png",), offset=7)  # an edited input ...
    target = out / "images" / "q0.png.png"
    subprocess.run(["chattr", "+i", str(target)], check=True)  # ... whose old output cannot be replaced
    try:
        r = rasr(env, "enhance", str(inp), str(out), *BICUBIC)
        assert r.returncode == 3
        row = rows_by_name(out)["q0.png"]
        assert row["status"] == "error" and "cannot write output" in row["error"]
        assert "STALE" in row["error"] and "earlier version" in row["error"]  # the row says what the file is
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=True)
    r = rasr(env, "enhance", str(inp), str(out), *BICUBIC)  # writable again: retried without asking
    assert summary_of(r.stdout)["processed"] == "1", r.stdout + r.stderr
    row = rows_by_name(out)["q0.png"]
    assert row["status"] == "ok" and target.read_bytes() != old
    expected = np.asarray(Image.open(inp / "q0.png").convert("RGB").resize((96, 80), Image.BICUBIC)).astype(int)
    diff = lambda data: np.abs(np.asarray(Image.open(data)).astype(int) - expected).mean()
    assert diff(target) < 3 < diff(io.BytesIO(old))  # made from the new pixels, not the old ones
    again = rasr(env, "enhance", str(inp), str(out), *BICUBIC)  # the verdict on broken.png is kept ...
    assert again.returncode == 0 and "nothing new" in again.stdout
    retried = rasr(env, "enhance", str(inp), str(out), *BICUBIC, "--retry-failed")  # ... unless asked
    assert summary_of(retried.stdout)["processed"] == "1" and retried.returncode == 3


def test_an_input_that_fails_now_loses_the_output_of_its_earlier_version(env, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    photos(inp)
    assert rasr(env, "enhance", str(inp), str(out), *BICUBIC).returncode == 0
    (inp / "q1.png").write_bytes(b"truncated")  # replaced by a broken file
    r = rasr(env, "enhance", str(inp), str(out), *BICUBIC)
    assert r.returncode == 3
    row = rows_by_name(out)["q1.png"]
    assert row["status"] == "error" and "earlier version" in row["notes"]
    assert not (out / "images" / "q1.png.png").exists()


# ---- 3. reruns after edits settle -----------------------------------------------------------------------------

def test_reruns_after_edits_settle(env, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    photos(inp, names=("q0.png", "q1.png", "q2.png", "q3.png"))
    assert rasr(env, "enhance", str(inp), str(out), *BICUBIC).returncode == 0
    photos(inp, names=("q0.png",), offset=9)                  # new pixels
    shutil.copy(inp / "q1.png", tmp_path / "copy.png")        # the same bytes, a new file and mtime
    os.replace(tmp_path / "copy.png", inp / "q1.png")
    first = rasr(env, "enhance", str(inp), str(out), *BICUBIC)
    s = summary_of(first.stdout)
    assert s["processed"] == "1" and "done_by_other_runs" not in s, first.stdout  # q1: its sha256 decides
    for _ in range(2):  # every later rerun: a no-op answered before Prefect or Ray start
        again = rasr(env, "enhance", str(inp), str(out), *BICUBIC)
        assert again.returncode == 0 and "nothing new: all 4 inputs are done" in again.stdout
        assert "run_id" not in summary_of(again.stdout)
    assert not list((out / "_state").glob("plan-*"))  # the CLI's plan, handed to the flow, is gone
    # a night told what is new (--input-list): only the listed photo, with no listing of INPUT
    photos(inp, names=("q4.png", "q5.png"), offset=3)
    (tmp_path / "new.txt").write_text("q4.png\n")
    night = rasr(env, "enhance", str(inp), str(out), *BICUBIC, "--input-list", str(tmp_path / "new.txt"))
    assert night.returncode == 0 and summary_of(night.stdout)["processed"] == "1", night.stdout + night.stderr
    assert "q4.png" in rows_by_name(out) and "q5.png" not in rows_by_name(out)


def test_a_run_with_work_lists_the_archive_and_reads_its_run_state_once(flows_env, tmp_path, monkeypatch):
    """The CLI plans before any engine starts and hands its plan to the flow (issue 26): one listing of INPUT and
    one read of the run state per run, counted where they happen."""
    from flows import cli
    from rasr import catalog, runstate

    inp, out = tmp_path / "in", tmp_path / "out"
    photos(inp, names=("q0.png", "q1.png"))
    calls = {"list_inputs": 0, "read": 0}
    def counted(real, name):
        def counting(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return counting

    for module, name in ((catalog, "list_inputs"), (runstate, "read")):
        monkeypatch.setattr(module, name, counted(getattr(module, name), name))
    r = CliRunner().invoke(cli.main, ["enhance", str(inp), str(out), *BICUBIC])
    assert r.exit_code == 0, r.output
    s = summary_of(r.output)
    assert (s["inputs"], s["already_done"], s["processed"]) == ("2", "0", "2"), r.output
    assert calls == {"list_inputs": 1, "read": 1}


# ---- 4. which gallery version each row retrieved from ---------------------------------------------------------

def test_rows_record_the_gallery_version_and_a_reindex_redoes_nothing(flows_env, sample_dirs, tmp_path):
    from flows.enhance import enhance_archive
    from flows.index import index_gallery
    from rasr.retrieval.index_run import IndexConfig
    from rasr.restoration.enhance_run import EnhanceConfig
    from rasr.retrieval.gallery import Gallery

    gallery = tmp_path / "gallery"
    src = sample_dirs["gallery"]
    cats = sorted(os.listdir(src))[:3]
    for cat in cats[:2]:
        first = sorted(os.listdir(os.path.join(src, cat)))[0]
        os.makedirs(gallery / cat)
        shutil.copy(os.path.join(src, cat, first), gallery / cat / first)
    db = str(tmp_path / "refs.lance")
    index_gallery(str(gallery), IndexConfig(db=db))
    g = Gallery.open(db)
    v1 = g.version()
    cfg = EnhanceConfig(db=db, generator="bicubic")
    enhance_archive(sample_dirs["archive"], str(tmp_path / "out"), cfg)
    rows = read_manifest(str(tmp_path / "out")).to_pylist()
    assert {(r["gallery_table"], r["gallery_version"]) for r in rows} == {(g.name, v1)}
    page = "".join(p.read_text(errors="replace") for p in (tmp_path / "out" / "report").rglob("*")
                   if p.is_file() and p.suffix in (".html", ".js", ".json"))
    assert f"{g.name} version {v1}" in page and f"{g.name} v{v1}" in page  # per image and in the summary
    more = sorted(os.listdir(os.path.join(src, cats[2])))[0]
    os.makedirs(gallery / cats[2])
    shutil.copy(os.path.join(src, cats[2], more), gallery / cats[2] / more)
    index_gallery(str(gallery), IndexConfig(db=db))  # a re-index: a new table version
    assert Gallery.open(db).version() > v1
    s = enhance_archive(sample_dirs["archive"], str(tmp_path / "out"), cfg)
    assert s["processed"] == 0  # not redone by default


# ---- 5. the small ones ----------------------------------------------------------------------------------------

def test_ctrl_c_says_how_to_resume(monkeypatch, tmp_path):
    from flows import cli

    def interrupted(dest):
        raise KeyboardInterrupt

    monkeypatch.setattr("rasr.samples.write_sample", interrupted)
    r = CliRunner().invoke(cli.main, ["sample", str(tmp_path / "s")])
    assert r.exit_code == 130
    assert "interrupted" in r.output and "run the same command again to resume" in r.output
    assert "Aborted!" not in r.output


def test_an_empty_gallery_is_warned_about(env, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    db = str(tmp_path / "refs.lance")
    r = rasr(env, "index", str(tmp_path / "empty"), "--db", db)
    assert "warning:" in r.stderr and "holds no photos" in r.stderr, r.stderr
    photos(tmp_path / "in", names=("q0.png",))
    s = rasr(env, "search", str(tmp_path / "in" / "q0.png"), "--db", db)
    assert "holds no photos" in s.stderr, s.stderr + s.stdout
    e = rasr(env, "enhance", str(tmp_path / "in"), str(tmp_path / "out"), "--db", db, *BICUBIC)
    assert e.returncode == 0 and "holds no photos" in e.stderr
