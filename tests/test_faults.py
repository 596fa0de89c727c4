"""The fault-injection suite (marker `faults`): hostile inputs, kills at seeded points, object-store
faults through a fault-injecting proxy, worker deaths and out-of-memory, and what must never leak.

Figures of the last run go to $RASR_FAULT_REPORT (JSON lines) when it is set; docs/RELIABILITY.md
quotes them."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from rasr import catalog, storage
from rasr.restoration.worker import EnhanceWorker
from rasr.restoration.enhance_run import EnhanceConfig
from rasr.restoration.images import decode_image
from rasr.manifest import read_manifest
from rasr.samples import as_rgb, load_photo, photo_names
from tests.badinputs import PIXEL_LIMIT, write_hostile_inputs
from tests.flows.test_cli import summary_of
from tests.flows.test_cluster import cluster  # noqa: F401 - the two-node Ray cluster fixture

pytestmark = pytest.mark.faults


def report(test: str, **figures) -> None:
    path = os.environ.get("RASR_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, **figures}) + "\n")


def enhance_in_process(src: str, out: str, **cfg) -> list[dict]:
    """List + enhance without Prefect or Ray (what each worker does), in one call."""
    items = catalog.list_inputs(src)
    worker = EnhanceWorker(EnhanceConfig(generator="bicubic", **cfg), io_threads=2)
    try:
        return worker.process(items, out, "s0", "r0")
    finally:
        worker.close()


# ---- hostile inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    src, out = str(root / "in"), str(root / "out")
    expected = write_hostile_inputs(src, str(root / "outside"))
    real_read = storage.read_bytes

    def read(uri):
        if uri.endswith("unreadable.jpg"):
            raise PermissionError(13, "Permission denied", uri)  # root ignores chmod: deny it here
        return real_read(uri)

    storage.read_bytes = read
    try:
        rows = enhance_in_process(src, out, max_pixels=PIXEL_LIMIT)
    finally:
        storage.read_bytes = real_read
    return expected, {r["relpath"]: r for r in rows}, src, out


def test_every_listed_file_has_exactly_one_row(hostile):
    expected, rows, _, _ = hostile
    assert len(expected) >= 40
    assert sorted(rows) == sorted(expected)
    report("hostile_inputs", kinds=len(expected), rows=len(rows), ok=sum(r["status"] == "ok" for r in rows.values()))




def pytest_generate_tests(metafunc):
    if "kind" in metafunc.fixturenames:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            names = sorted(write_hostile_inputs(os.path.join(d, "in"), os.path.join(d, "out")))
        metafunc.parametrize("kind", names, ids=[repr(n)[1:-1][:40] for n in names])


def test_each_kind_gets_its_status_and_reason(hostile, kind):
    expected, rows, _, out = hostile
    status, text = expected[kind]
    row = rows[kind]
    assert row["status"] == status, (kind, row["status"], row["error"])
    if text:
        assert text in f"{row['error']} {row['notes']}", (kind, row["error"], row["notes"])
    if status == "ok":
        uri = row["output_uri"]
        images = os.path.realpath(os.path.join(out, "images")) + os.sep
        assert os.path.realpath(uri).startswith(images)  # never escapes OUTPUT/images
        dec = decode_image(open(uri, "rb").read(), max_pixels=1 << 40)
        assert (dec.width, dec.height) == (row["out_width"], row["out_height"]) == (4 * row["width"], 4 * row["height"])


def test_orientations_animations_and_name_twins(hostile):
    _, rows, _, _ = hostile
    for k in range(2, 9):  # displayed size: 40 x 24, or 24 x 40 when the EXIF turns it by 90 degrees
        assert (rows[f"exif{k}.jpg"]["width"], rows[f"exif{k}.jpg"]["height"]) == ((24, 40) if k >= 5 else (40, 24))
    assert rows["anim.gif"]["frames"] == rows["anim.webp"]["frames"] == 3
    assert rows["png_named.jpg"]["frames"] == 1 and not rows["png_named.jpg"]["notes"]
    for a, b in (("a.jpg", "a.jpg.png"), ("Case.jpg", "case.jpg")):
        assert rows[a]["output_uri"].casefold() != rows[b]["output_uri"].casefold()
        assert open(rows[a]["output_uri"], "rb").read() != open(rows[b]["output_uri"], "rb").read() or a == "Case.jpg"


def test_valid_images_beside_bad_ones_are_unaffected(hostile, tmp_path):
    _, rows, src, _ = hostile
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("sp ace.jpg", "rgba.png", "nested/deeper/photo.jpg", "cmyk.jpg"):
        os.makedirs(os.path.dirname(alone / name), exist_ok=True)
        (alone / name).write_bytes(open(os.path.join(src, name), "rb").read())
    clean = {r["relpath"]: r for r in enhance_in_process(str(alone), str(tmp_path / "out"), max_pixels=PIXEL_LIMIT)}
    for name, row in clean.items():
        assert open(row["output_uri"], "rb").read() == open(rows[name]["output_uri"], "rb").read(), name


# ---- crash consistency: SIGKILL at seeded points, resumed ----------------------------------------

RASR = [sys.executable, "-m", "flows.cli"]


def cli(args: list[str], env: dict, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*RASR, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env}, start_new_session=True, **kw)


def write_photos(folder, n: int, size=(40, 32)) -> list[str]:
    names = []
    for i in range(n):
        name = f"{'ab'[i % 2]}/{i:02d}.png"
        os.makedirs(os.path.join(folder, name[0]), exist_ok=True)
        photo = as_rgb(load_photo(photo_names()[i % len(photo_names())]))
        Image.fromarray(photo).resize(size).save(os.path.join(folder, name))
        names.append(name)
    return names


def files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def assert_consistent(out: str, names: list[str], reference: dict[str, bytes]) -> None:
    """One row per input (no duplicates), outputs byte-identical to an uninterrupted run, no orphan
    image, no temporary file, no lease left."""
    rows = read_manifest(out, latest=False).to_pylist()
    assert sorted(r["relpath"] for r in rows) == sorted(names)
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert open(r["output_uri"], "rb").read() == reference[r["relpath"]], r["relpath"]
    images = {os.path.join(out, "images", p) for p in files_under(os.path.join(out, "images"))}
    assert images == {r["output_uri"] for r in rows}
    leftovers = [p for p in files_under(out) if os.path.basename(p).startswith(storage.TEMP_PREFIX)
                 or (p.startswith("_leases/") and p.endswith(".json"))]
    assert leftovers == []


def reference_outputs(src: str, tmp: str, **cfg) -> dict[str, bytes]:
    rows = enhance_in_process(src, tmp, **cfg)
    return {r["relpath"]: open(r["output_uri"], "rb").read() for r in rows}


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def test_sigkill_at_seeded_points_then_resume_is_byte_identical(prefect_harness, tmp_path):
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    names = write_photos(src, 24)
    reference = reference_outputs(src, str(tmp_path / "ref"))
    env = {"PREFECT_API_URL": prefect_harness}
    args = ["enhance", src, out, "--generator", "bicubic", "--shard-size", "2", "--batch-size", "2", "--workers", "1"]
    rng = random.Random(int(os.environ.get("RASR_FAULT_SEED", 7)))
    points = ["decode", "restore", "temp-written", "manifest-write", "marker-write"]
    rng.shuffle(points)
    kills = []
    # Seeded hit counts, late enough that each killed run finishes a shard or two first (12 shards of
    # 2 inputs, one batch each: per run the actor decodes 2 and writes 2 images per shard, the driver
    # writes 1 manifest part and 1 marker per shard). First the driver alone, after its first marker
    # (its actors go on writing while the next run starts), then the whole run.
    hits = {"decode": (3, 6), "restore": (2, 3), "temp-written": (3, 6), "manifest-write": (2, 3),
            "marker-write": (2, 3)}
    plan = [("marker-write", 2, "kill-process")] + [(p, rng.randint(*hits[p]), "kill-run") for p in points]
    orphans = []
    for point, n, action in plan:
        proc = subprocess.Popen([*RASR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                env={**os.environ, **env, "RASR_FAULT": f"{point}={n}:{action}"})
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, err[-2000:])
        if action == "kill-process":
            orphans.append(proc.pid)  # Ray and its actors of that run: still running
        else:
            deadline = time.time() + 10
            while group_alive(proc.pid) and time.time() < deadline:
                time.sleep(0.1)
            assert not group_alive(proc.pid), "a kill of the run must leave no process behind"
        done = len(os.listdir(os.path.join(out, "_done"))) if os.path.isdir(os.path.join(out, "_done")) else 0
        kills.append({"point": point, "hit": n, "action": action, "shards_done": done})
    try:
        r = cli(args, env)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        for pgid in orphans:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    assert_consistent(out, names, reference)
    assert kills[-1]["shards_done"] < 12, "the last kill must land before the end"
    done = [k["shards_done"] for k in kills]
    assert done == sorted(done) and done[-1] > done[0], "finished shards are kept and each run adds to them"
    report("crash_consistency", runs=len(plan) + 1, kills=kills, inputs=len(names),
           rows=len(read_manifest(out, latest=False)), rows_lost=0, duplicates=0)


# ---- worker faults and concurrent runs ------------------------------------------------------------

def test_a_dying_worker_is_replaced_and_a_shard_claimed_by_another_run_is_left_to_it(prefect_harness, tmp_path):
    """An actor exits mid-batch: its batch is redone on a healthy actor, recorded in the summary and
    the rows. Meanwhile one shard is claimed by another live run (a lease this test holds): this run
    leaves it alone, says so, and the next run does it."""
    from rasr.restoration.enhance_run import plan as make_plan
    from rasr.locks import Lease

    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    names = write_photos(src, 12)
    reference = reference_outputs(src, str(tmp_path / "ref"))
    args = ["enhance", src, out, "--generator", "bicubic", "--shard-size", "4", "--batch-size", "2", "--workers", "2"]
    shards = make_plan(EnhanceConfig(generator="bicubic", batch_size=2, shard_size=4), src, out).shards
    other_run = Lease(storage.join(out, catalog.LEASE_DIR, f"shard={shards[1].id}.json"), ttl=600, run_id="nightly")
    assert other_run.acquire()
    env = {"PREFECT_API_URL": prefect_harness, "RASR_FAULT": "restore=2:exit-once",
           "RASR_FAULT_ONCE": str(tmp_path / "died-once")}
    r = cli(args, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(tmp_path / "died-once"), "the fault must have fired"
    summary = summary_of(r.stdout)
    assert int(summary["retried_batches"]) >= 1 and summary["left_to_other_runs"] == "4"
    assert "being enhanced by another run" in r.stderr
    rows = read_manifest(out, latest=False).to_pylist()
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    assert any("retried on another worker" in (r["notes"] or "") for r in rows)

    other_run.release()  # the other run ended without finishing its shard: the next run does it
    r = cli(args, {"PREFECT_API_URL": prefect_harness})
    assert r.returncode == 0, r.stderr[-3000:]
    assert_consistent(out, names, reference)
    report("worker_faults", actor_deaths=1, retried_batches=int(summary["retried_batches"]),
           deferred_inputs=4, rows=len(read_manifest(out, latest=False)), rows_lost=0, duplicates=0)



# ---- object-store faults ------------------------------------------------------------------------------

def test_index_and_enhance_through_a_faulty_store_then_with_the_store_down(s3_server, prefect_harness, sample_dirs,
                                                                            tmp_path):
    """5% of S3 requests dropped, delayed, answered 500/503 or cut short: index and enhance complete
    with nothing lost or duplicated. Then the store goes away mid-run: one clear error, no done-marker
    for an unfinished shard; back up, the next run completes the job. No credential anywhere."""
    import boto3

    from tests.conftest import S3_KEY_ID, S3_SECRET
    from tests.faultproxy import FaultProxy

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    bucket = f"faults-{os.getpid()}"
    s3.create_bucket(Bucket=bucket)
    archive = tmp_path / "archive"
    names = write_photos(archive, 8, size=(32, 24))
    for kind, root in (("gallery", sample_dirs["gallery"]), ("archive", str(archive))):
        for rel in files_under(root)[:3 if kind == "gallery" else None]:
            s3.upload_file(os.path.join(root, rel), bucket, f"{kind}/{rel}")
    proxy = FaultProxy(s3_server, rate=0.05, seed=int(os.environ.get("RASR_FAULT_SEED", 7)))
    env = {"PREFECT_API_URL": prefect_harness, "AWS_ENDPOINT_URL": proxy.url, "RASR_S3_ATTEMPTS": "4"}
    base = f"s3://{bucket}"
    logs = []

    r = cli(["index", f"{base}/gallery", "--db", f"{base}/refs.lance"], env)
    logs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr[-3000:]
    # transfer off: the run without --db below must give the same pixels (the sample archive's photos are copies of
    # gallery photos, which a same-scene transfer would use)
    args = ["enhance", f"{base}/archive", f"{base}/out", "--db", f"{base}/refs.lance", "--generator", "bicubic",
            "--shard-size", "2", "--workers", "1", "--reference-transfer", "off"]
    r = cli(args, env)
    logs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_manifest(f"{base}/out", latest=False).to_pylist()
    assert sorted(x["relpath"] for x in rows) == sorted(names) and all(x["status"] == "ok" for x in rows)
    assert all(x["ref_uris"] and storage.exists(x["output_uri"]) for x in rows)
    faulty = {"requests": proxy.requests, **proxy.injected}

    # the store goes away mid-run: stop with one clear error, mark nothing done that is not
    args_down = [a if a != f"{base}/out" else f"{base}/out2" for a in args if a not in ("--db", f"{base}/refs.lance")]
    proxy.rate, proxy.down_at = 0.0, proxy.requests + 30  # about half-way through the run
    proc = subprocess.Popen([*RASR, *args_down], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **env, "RASR_S3_ATTEMPTS": "1"})
    out, err = proc.communicate(timeout=300)
    logs += [out, err]
    assert proc.returncode == 1, (proxy.requests, err[-3000:])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and ("connect" in errors[0].lower() or "endpoint" in errors[0].lower()), err[-3000:]
    proxy.up()
    markers = catalog.done_markers(f"{base}/out2")
    partial = manifest_relpaths(f"{base}/out2")
    for m in markers:  # a marker only for a shard whose every row is written
        assert {it["relpath"] for it in m["items"]} <= partial
    assert len(markers) < 4
    r = cli(args_down, env)
    logs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr[-3000:]
    rows2 = read_manifest(f"{base}/out2", latest=False).to_pylist()
    assert sorted(x["relpath"] for x in rows2) == sorted(names) and all(x["status"] == "ok" for x in rows2)
    for x in rows2:  # the same pixels (the bytes differ in the provenance: this config has no --db)
        again, first = (decode_image(storage.read_bytes(u)).rgb for u in (x["output_uri"],
                                                                         x["output_uri"].replace("/out2/", "/out/")))
        assert np.array_equal(again, first)

    # no credential in anything written or printed: manifests, markers, run summaries, logs, artifacts
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if not obj["Key"].startswith(("gallery/", "archive/")):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert S3_SECRET.encode() not in body and S3_KEY_ID.encode() not in body, obj["Key"]
    for text in logs + [json.dumps(a) for a in prefect_artifacts()]:
        assert S3_SECRET not in text and S3_KEY_ID not in text
    report("object_store_faults", **faulty, rows=len(rows) + len(rows2), rows_lost=0, duplicates=0,
           store_down_markers=len(markers))


def manifest_relpaths(out: str) -> set[str]:
    return {r["relpath"] for r in read_manifest(out, latest=False).to_pylist()}


def prefect_artifacts() -> list[dict]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return [a.model_dump(mode="json") for a in await client.read_artifacts(limit=200)]

    return asyncio.run(read())


def test_a_node_removed_mid_run_loses_nothing(cluster, prefect_harness, tmp_path):  # noqa: F811 - the imported fixture
    """Two-node Ray cluster; the node of one actor is killed (its raylet and workers) mid-run: the
    batches it held are redone on the surviving actor, and every input ends with exactly one row."""
    import psutil

    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    names = write_photos(src, 12)
    reference = reference_outputs(src, str(tmp_path / "ref"))
    args = ["enhance", src, out, "--generator", "bicubic", "--ray-address", cluster, "--workers", "2",
            "--gpus-per-worker", "0", "--worker-resources", '{"rasr_slot": 1}', "--shard-size", "1"]
    proc = subprocess.Popen([*RASR, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PREFECT_API_URL": prefect_harness})
    done_dir = os.path.join(out, "_done")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and \
            (not os.path.isdir(done_dir) or len(os.listdir(done_dir)) < 2):
        time.sleep(0.05)
    raylets = [p for p in psutil.process_iter(["cmdline"])
               if "raylet" in " ".join(p.info["cmdline"] or [])[:300] and "gpu_node" in " ".join(p.info["cmdline"] or [])]
    assert len(raylets) == 1, "the second node's raylet"
    victims = [raylets[0], *raylets[0].children(recursive=True)]
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    removed_at = len(os.listdir(done_dir))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert removed_at < 12, "the node must be removed mid-run"
    assert int(summary_of(stdout)["retried_batches"]) >= 1  # the lost node's batches, redone and reported
    assert_consistent(out, names, reference)
    report("node_removed", shards_done_at_removal=removed_at, retried_batches=int(summary_of(stdout)["retried_batches"]),
           rows=len(names), rows_lost=0, duplicates=0)
