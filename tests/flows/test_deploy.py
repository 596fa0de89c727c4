"""prefect.yaml against a real Prefect server: work pool, worker, `prefect deploy --all`, scheduled
nightly deployment run twice (the second sees only the two new photos). Everything is torn down."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rasr.manifest import read_manifest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """A Prefect worker ignores one SIGINT for a while: send two, then kill (STACK-NOTES)."""
    if proc.poll() is not None:
        return
    for _ in range(2):
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        time.sleep(1)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_KEY", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "prefect server did not become healthy in 120 s"
            time.sleep(1)
    yield env
    stop(proc)


WATCH = ("--watch", "--watch-interval", "1", "--watch-timeout", "400")


def prefect(env, *args, timeout=600, **kw):
    r = subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT, **kw)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_deployments_on_a_real_server(server, sample_dirs, small_gallery, db, tmp_path):
    """Every deployment deploys (Prefect validates its parameters against the flow's); the nightly one
    runs through a process worker on the session's indexed gallery (the index flow runs in
    tests/flows/test_index_flow.py, tests/flows/test_cluster.py and through the CLI)."""
    archive, out = tmp_path / "archive", tmp_path / "out"
    shutil.copytree(sample_dirs["archive"], archive)
    env = {**server, "PWD": str(ROOT), "RASR_ARCHIVE": str(archive), "RASR_OUTPUT": str(out), "RASR_DB": db,
           "RASR_GALLERY": small_gallery, "RASR_EVAL_SET": str(tmp_path / "eval"),
           "RASR_EVAL_OUT": str(tmp_path / "eval-out"), "RASR_DATASET": str(tmp_path / "ds"),
           "RASR_TRAIN_OUT": str(tmp_path / "train")}
    prefect(env, "work-pool", "create", "rasr-process", "--type", "process")
    prefect(env, "work-pool", "create", "rasr-gpu", "--type", "process")  # k8s in production; any type deploys
    prefect(env, "--no-prompt", "deploy", "--all")
    listed = prefect(env, "deployment", "ls")
    for name in ("nightly-enhance", "collect-stale", "reindex-gallery", "evaluate", "train"):
        assert name in listed

    # the nightly deployment: cron 02:00, concurrency limit 1, the parameters from the environment
    info = json.loads(_deployment_json(env, "nightly-enhance/nightly-enhance"))
    assert info["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert info["concurrency_limit"] == 1 or (info.get("global_concurrency_limit") or {}).get("limit") == 1
    assert info["parameters"]["input"] == str(archive) and info["parameters"]["config"]["db"] == db

    worker_log = open(tmp_path / "worker.log", "w")
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "rasr-process"], env=worker_env,
                              cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        prefect(env, "deployment", "run", "nightly-enhance/nightly-enhance", *WATCH)
        rows = read_manifest(str(out)).to_pylist()
        assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
        assert (out / "_state" / "watermark.json").exists()  # the next night starts from here
        runs = sorted((out / "runs").glob("*.parquet"))
        assert len(runs) == 1 and pq.read_table(runs[0]).to_pylist()[0]["ok"] == 6
        assert (out / "report" / "index.html").exists()  # the deployment writes the results page too
    except AssertionError:
        worker_log.flush()
        print((tmp_path / "worker.log").read_text()[-4000:])
        raise
    finally:
        stop(worker)


def _deployment_json(env, name: str) -> str:
    code = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as c:\n"
            f"        d = await c.read_deployment_by_name({name!r})\n"
            "        print(d.model_dump_json())\n"
            "asyncio.run(main())\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_prefect_yaml_shape():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"nightly-enhance", "collect-stale", "reindex-gallery", "evaluate", "train"}
    assert names["collect-stale"]["schedules"][0]["cron"] == "0 4 * * 0"  # weekly, not part of the nights
    assert names["nightly-enhance"]["concurrency_limit"] == 1
    assert names["nightly-enhance"]["schedules"][0]["cron"] == "0 2 * * *"
    assert "timezone" in names["nightly-enhance"]["schedules"][0]
    assert "definitions" in spec
    for d in spec["deployments"]:
        module, func = d["entrypoint"].split(":")
        src = (ROOT / module).read_text()
        assert f"def {func}(" in src
