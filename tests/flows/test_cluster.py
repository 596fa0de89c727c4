"""Scale-out: one enhance run on a real two-node Ray cluster (two `ray start` on this machine), and two
re-index runs writing one gallery table at the same time."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from rasr.retrieval.gallery import Gallery
from rasr.manifest import read_manifest
from tests.flows.test_cli import summary_of
from tests.flows.test_deploy import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def kill_cluster(port: int, temp_dir: str) -> None:
    """Stop only this cluster's processes (`ray stop` would also kill the test session's own Ray)."""
    victims = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f":{port}" in cmd or temp_dir in cmd:
            victims.append(p)
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=10)


@pytest.fixture()
def cluster(tmp_path_factory):
    port = free_port()
    temp_dir = str(tmp_path_factory.mktemp("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus", "1", "--object-store-memory", "200000000", "--disable-usage-stats"]
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", "--port", str(port), "--temp-dir", temp_dir,
                        "--include-dashboard=false", "--resources", '{"rasr_slot": 1}', *common],
                       env=env, check=True, capture_output=True, timeout=180)
        # the second node carries a custom resource of its own, as a GPU worker group would ("gpu_node")
        subprocess.run([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}",
                        "--resources", '{"rasr_slot": 1, "gpu_node": 1}', *common],
                       env=env, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        kill_cluster(port, temp_dir)


def test_one_enhance_run_places_actors_on_both_nodes(cluster, sample_dirs, tmp_path, prefect_harness):
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    out = tmp_path / "out"
    rasr = [sys.executable, "-m", "flows.cli"]  # (retrieval on a cluster: tests/test_faults.py and tests/flows/test_s3.py)
    r = subprocess.run([*rasr, "enhance", sample_dirs["archive"], str(out), "--generator", "bicubic",
                        "--ray-address", cluster, "--workers", "2", "--gpus-per-worker", "0",
                        "--worker-resources", '{"rasr_slot": 1}', "--shard-size", "1"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = summary_of(r.stdout)
    assert s["workers"] == "2" and s["nodes"] == "2" and s["ok"] == "6"
    workers = {row["worker"] for row in read_manifest(str(out)).to_pylist()}
    assert len(workers) == 2  # both actors did work


def test_concurrent_reindex_runs_leave_a_correct_table(small_gallery, tmp_path, prefect_harness):
    env = {**os.environ, "PREFECT_API_URL": prefect_harness}
    gallery = tmp_path / "gallery"
    shutil.copytree(small_gallery, gallery)
    db = tmp_path / "refs.lance"
    cmd = [sys.executable, "-m", "flows.cli", "index", str(gallery), "--db", str(db), "--keep-versions-minutes", "0"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    embedded = sorted(int(summary_of(o[0])["embedded"]) for o in outs)
    assert embedded == [0, 4]  # one writer at a time: the second found everything indexed
    g = Gallery.open(str(db))
    uris = list(g.files())
    assert len(uris) == len(set(uris)) == g.count() == 4
    assert {str(p) for p in gallery.rglob("*.png")} == set(uris)
    assert len(g.table.list_versions()) <= 2  # bulk write compacted, old versions dropped
