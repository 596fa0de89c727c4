"""The `rasr` command line, run as users run it (subprocesses, the installed entry point)."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from rasr.manifest import read_manifest
from rasr.samples import as_rgb, load_photo
from tests.badinputs import PIXEL_LIMIT, write_bad_inputs

RASR = [sys.executable, "-m", "flows.cli"]


API_ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def prefect_api(prefect_harness, ray_session):
    """CLI subprocesses talk to the session's test API (else each one boots its own server, ~10 s) and
    join the session's Ray as a cluster through RAY_ADDRESS, as users point them at theirs (else each
    one starts Ray, ~5 s)."""
    import ray

    API_ENV["PREFECT_API_URL"] = prefect_harness
    API_ENV["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield
    API_ENV.clear()


def run(*args, timeout=300, **kw):
    env = {**os.environ, **API_ENV}
    return subprocess.run([*RASR, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw)


def summary_of(stdout: str) -> dict[str, str]:
    """The `key  value` lines of a run summary."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 1)
        if line.startswith("  ") and len(parts) == 2:
            out[parts[0]] = parts[1].strip()
    return out


@pytest.fixture(scope="module")
def cli_db(db):
    """The session's indexed sample gallery (`rasr index` through the CLI runs in tests/flows/test_cluster.py,
    tests/test_faults.py (on S3 behind a faulty proxy) and scripts/setup.sh)."""
    return db


def test_help_is_complete():
    top = run("--help")
    assert top.returncode == 0
    for cmd in ("index", "search", "enhance", "sample"):
        assert cmd in top.stdout
    expected = {
        "index": ["--db", "--encoder", "efficientnet-lite0", "dinov2", "clip", "vgg16", "--encoder-weights",
                  "--table", "--shard-size", "--workers", "--gpus-per-worker", "--ray-address"],
        "search": ["--db", "-k", "--json", "--table", "--category"],
        "enhance": ["--db", "--generator", "realesrgan", "bicubic", "refdsr", "osediff", "--top-k",
                    "--min-similarity", "--shard-size", "--tile", "--color-fix", "--format", "--precision",
                    "--max-pixels", "--workers", "--gpus-per-worker"],
    }
    from click.testing import CliRunner

    from flows.cli import main

    for cmd, words in expected.items():  # in process: the subprocess above already proved the entry point
        h = CliRunner().invoke(main, [cmd, "--help"])
        assert h.exit_code == 0, h.output
        for w in words:
            assert w in h.output, f"{cmd} --help lacks {w}"


def test_search_json_excludes_the_identical_image(cli_db, sample_dirs):
    chelsea = os.path.join(sample_dirs["gallery"], "animals", "chelsea.png")
    r = run("search", chelsea, "--db", cli_db, "-k", "5", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 5 and all(set(h) >= {"uri", "category", "similarity"} for h in hits)
    assert chelsea not in [h["uri"] for h in hits]  # same sha256: never its own reference
    sims = [h["similarity"] for h in hits]
    assert sims == sorted(sims, reverse=True) and -1 <= sims[-1] <= sims[0] <= 1

    lowres = os.path.join(sample_dirs["archive"], "animals", "chelsea_lowres.jpg")
    r = run("search", lowres, "--db", cli_db, "-k", "3")
    assert r.returncode == 0
    first = r.stdout.splitlines()[1]
    assert "animals" in first and "chelsea.png" in first


def test_enhance_reports_failures_with_exit_code_3(cli_db, tmp_path):
    expected = write_bad_inputs(str(tmp_path / "in"))
    r = run("enhance", str(tmp_path / "in"), str(tmp_path / "out"), "--db", cli_db, "--generator", "bicubic",
            "--max-pixels", str(PIXEL_LIMIT))
    assert r.returncode == 3, r.stderr
    summary = summary_of(r.stdout)
    assert summary["failed"] == str(sum(v == "error" for v in expected.values()))
    assert summary["ok"] == str(sum(v == "ok" for v in expected.values()))
    assert "truncated.jpg" in r.stderr and "enhance summary" in r.stdout
    assert summary["images"] == str(tmp_path / "out" / "images")  # where the outputs are


# Engines that cannot be reached: a command that started Prefect or Ray would fail (exit 1) or hang.
NO_ENGINES = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "RAY_ADDRESS": "127.0.0.1:9"}


@pytest.mark.parametrize("case", ["missing-input", "top-k-0", "refdsr-no-db", "output-is-file", "dangling-output",
                                  "db-missing", "db-is-file", "output-symlink-into-input", "bad-png-level"])
def test_usage_errors_exit_2_before_any_engine_and_create_nothing(case, cli_db, sample_dirs, tmp_path):
    archive, out = sample_dirs["archive"], str(tmp_path / "out")
    extra, expect = [], ""
    if case == "missing-input":
        archive, expect = str(tmp_path / "nope"), "does not exist"
    elif case == "top-k-0":
        extra, expect = ["--top-k", "0"], "--top-k must be >= 1"
    elif case == "refdsr-no-db":
        extra, expect = ["--generator", "refdsr"], "pass --db"
    elif case == "output-is-file":
        open(out, "w").close()
        expect = "not a folder"
    elif case == "dangling-output":
        os.symlink(tmp_path / "gone", out)
        expect = "dangling symlink"
    elif case == "db-missing":
        extra, expect = ["--db", str(tmp_path / "refs.lance")], "does not exist"
    elif case == "db-is-file":
        open(tmp_path / "db.lance", "w").close()
        extra, expect = ["--db", str(tmp_path / "db.lance")], "is a file"
    elif case == "output-symlink-into-input":
        os.symlink(archive, out)
        expect = "inside input"
    elif case == "bad-png-level":
        extra, expect = ["--png-level", "12"], "png-level"
    if "--db" not in extra and case != "refdsr-no-db":
        extra += ["--db", cli_db]
    before = sorted(os.listdir(tmp_path))
    r = subprocess.run([*RASR, "enhance", archive, out, *extra], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **NO_ENGINES})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert expect in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == before  # no output folder, no empty DB folder


@pytest.fixture(scope="module")
def small_run(cli_db, tmp_path_factory):
    """One finished bicubic run of three photos: the no-op rerun test reads it, the gc test then
    deletes one of its inputs (in that order)."""
    root = tmp_path_factory.mktemp("small")
    src, out = root / "in", root / "out"
    (src / "c").mkdir(parents=True)
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(as_rgb(load_photo(name))).resize((24, 20)).save(src / "c" / f"{name}.png")
    args = ["enhance", str(src), str(out), "--db", cli_db, "--generator", "bicubic"]
    assert run(*args).returncode == 0
    return src, out, args


def test_noop_rerun_starts_no_engine(small_run):
    _, _, args = small_run
    r = subprocess.run([*RASR, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **NO_ENGINES})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "nothing new" in r.stdout and summary_of(r.stdout)["already_done"] == "3"


@pytest.mark.parametrize("args", [["index", "{tmp}/nope", "--db", "{tmp}/refs.lance"],
                                  ["evaluate", "{tmp}/nope", "{tmp}/out"],
                                  ["dataset", "build", "{tmp}/nope", "{tmp}/out"],
                                  ["train", "{tmp}/nope", "{tmp}/out"]])
def test_other_commands_report_a_missing_input_before_any_engine(args, tmp_path):
    r = subprocess.run([*RASR, *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **NO_ENGINES})
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr[-2000:]
    assert os.listdir(tmp_path) == []


def test_gc_lists_then_removes_what_vanished_inputs_left(small_run):
    src, out, _ = small_run
    gone = read_manifest(str(out)).to_pylist()[0]
    os.unlink(gone["source_uri"])
    assert os.path.exists(gone["output_uri"])

    r = subprocess.run([*RASR, "gc", str(out)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **NO_ENGINES})  # gc starts no engine
    assert r.returncode == 0, r.stderr
    assert f"vanished {gone['source_uri']}" in r.stdout and summary_of(r.stdout)["vanished_inputs"] == "1"
    assert os.path.exists(gone["output_uri"]) and len(read_manifest(str(out))) == 3  # listing changes nothing

    r = subprocess.run([*RASR, "gc", str(out), "--input", str(src), "--apply"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **NO_ENGINES})
    assert r.returncode == 0, r.stderr
    assert summary_of(r.stdout)["removed_rows"] == "1" and summary_of(r.stdout)["removed_images"] == "1"
    rows = read_manifest(str(out), latest=False).to_pylist()
    assert len(rows) == 2 and gone["relpath"] not in {x["relpath"] for x in rows}
    assert not os.path.exists(gone["output_uri"])
    assert summary_of(r.stdout)["removed_page_rewritten"] == "True"  # nights only append: gc writes it anew
    pages = "".join(p.read_text() for p in (out / "report" / "data").glob("page-*.js"))
    assert gone["relpath"] not in pages and all(x["relpath"] in pages for x in rows)
    markers = json.dumps([json.load(open(out / "_done" / f)) for f in os.listdir(out / "_done")])
    assert gone["relpath"] not in markers  # re-created, the input would be enhanced again
    again = subprocess.run([*RASR, "gc", str(out)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **NO_ENGINES})
    assert summary_of(again.stdout)["vanished_inputs"] == "0"


def test_batch_search_of_a_folder_writes_one_row_per_query(cli_db, sample_dirs, tmp_path):
    import pyarrow.parquet as pq

    queries = tmp_path / "queries"
    queries.mkdir()
    gallery = sorted(p for p in os.listdir(os.path.join(sample_dirs["gallery"], "animals")))
    for name in gallery:  # gallery photos themselves: never their own reference
        (queries / name).write_bytes(open(os.path.join(sample_dirs["gallery"], "animals", name), "rb").read())
    (queries / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "hits.parquet"
    r = run("search", str(queries), "--db", cli_db, "-k", "3", "--out", str(out))
    assert r.returncode == 3, r.stderr[-2000:]  # one query failed: reported, the others answered
    rows = {os.path.basename(x["query_uri"]): x for x in pq.read_table(out).to_pylist()}
    assert sorted(rows) == sorted(gallery + ["broken.jpg"])
    assert rows["broken.jpg"]["status"] == "error" and "not a recognised image" in rows["broken.jpg"]["error"]
    for name in gallery:
        row = rows[name]
        assert row["status"] == "ok" and len(row["uris"]) == 3
        assert not any(u.endswith(f"/animals/{name}") for u in row["uris"])
        assert row["similarities"] == sorted(row["similarities"], reverse=True)
    one = json.loads(run("search", str(queries / gallery[0]), "--db", cli_db, "-k", "3", "--json").stdout)
    assert [h["uri"] for h in one] == rows[gallery[0]]["uris"]  # the same answer as the one-image search
