"""Shared fixtures. Environment hygiene first: nothing may try to phone home or write to ~."""

from __future__ import annotations

import os
import tempfile

_TEST_HOME = os.environ.get("RASR_TEST_HOME") or tempfile.mkdtemp(prefix="rasr-tests-")
os.environ.setdefault("RASR_TEST_HOME", _TEST_HOME)
_ENV = {
    "PREFECT_HOME": os.path.join(_TEST_HOME, "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": os.path.join(_TEST_HOME, "hf"),
    "TORCH_HOME": os.path.join(_TEST_HOME, "torch"),
    "RASR_CACHE": os.path.join(_TEST_HOME, "cache"),
    "LANCE_LOG": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
}
for _k, _v in _ENV.items():
    os.environ[_k] = _v

import numpy as np  # noqa: E402 - after the environment above, which these imports read
import pytest  # noqa: E402 - after the environment above, which these imports read

from rasr import samples  # noqa: E402 - after the environment above, which it reads

# tests that start servers or flows (Prefect, Ray, S3) are the integration tier; the rest run in
# under 2 minutes: scripts/test.sh -m "not integration"
INTEGRATION_FIXTURES = {"s3_server", "ray_session", "prefect_harness", "flows_env"}


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true",
                     help="also run the tests marked gpu (on a machine with a CUDA device)")


@pytest.hookimpl(tryfirst=True)  # before -m selects: the integration marks must be on the items
def pytest_collection_modifyitems(config, items):
    opt_in = config.getoption("--gpu")
    kept, dropped = [], []
    for item in items:
        if INTEGRATION_FIXTURES & set(item.fixturenames) or item.get_closest_marker("faults"):
            item.add_marker(pytest.mark.integration)
        (dropped if item.get_closest_marker("gpu") and not opt_in else kept).append(item)
    if dropped:  # deselected, never counted as passing here
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """All bundled real photos as RGB uint8."""
    return {n: samples.as_rgb(samples.load_photo(n)) for n in samples.photo_names()}


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return samples.as_rgb(samples.load_photo("chelsea"))


# ---- servers shared by the flow tests (each started once per session) ---------------------------

S3_KEY_ID = "rasr-test-key-id-7Q2"
S3_SECRET = "rasr-test-secret-Zx81Kp"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1; credentials in the environment.

    Started before Ray so Ray's worker processes inherit the same environment."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                       "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1"})
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """Ray started locally once (Ray 2.x has no local mode any more)."""
    from tasks.runtime import init_ray, shutdown_ray

    init_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's own test harness: a temporary API and database for the session."""
    from prefect.testing.utilities import prefect_test_harness

    import prefect.settings

    with prefect_test_harness(server_startup_timeout=120):
        yield prefect.settings.PREFECT_API_URL.value()  # subprocesses reuse it instead of starting their own


@pytest.fixture(scope="session")
def flows_env(prefect_harness, ray_session):
    """Everything an in-process flow run needs."""
    yield


@pytest.fixture(scope="session")
def db(tmp_path_factory, sample_dirs, prefect_harness, ray_session) -> str:
    """The sample gallery indexed once per session by the real flow (tests only read it)."""
    from flows.index import index_gallery
    from rasr.retrieval.index_run import IndexConfig

    path = str(tmp_path_factory.mktemp("db") / "refs.lance")
    index_gallery(sample_dirs["gallery"], IndexConfig(db=path))
    return path


@pytest.fixture(scope="session")
def sample_dirs(tmp_path_factory) -> dict[str, str]:
    """The bundled sample: gallery/<category>/<photo>.png and a low-res archive."""
    return samples.write_sample(str(tmp_path_factory.mktemp("sample")))


@pytest.fixture(scope="session")
def small_gallery(sample_dirs, tmp_path_factory) -> str:
    """One photo of each of 4 categories of the sample gallery: for tests of the machinery around
    indexing (S3, concurrent runs) rather than of retrieval, where each indexed photo only costs time."""
    import shutil

    root = tmp_path_factory.mktemp("small-gallery")
    for cat in sorted(os.listdir(sample_dirs["gallery"]))[:4]:
        first = sorted(os.listdir(os.path.join(sample_dirs["gallery"], cat)))[0]
        (root / cat).mkdir()
        shutil.copy(os.path.join(sample_dirs["gallery"], cat, first), root / cat / first)
    return str(root)


def tree_snapshot(root: str) -> dict[str, tuple[int, int, str]]:
    """relpath -> (size, mtime_ns, sha256) of every file under root."""
    import hashlib

    snap = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            snap[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns,
                                              hashlib.sha256(open(p, "rb").read()).hexdigest())
    return snap


@pytest.fixture(scope="session")
def tiny_diffusion(tmp_path_factory) -> dict[str, str]:
    """Tiny SD-2.1-layout folder + OSEDiff pkl + a (perturbed) RefDSR branch, saved where users keep them."""
    from rasr.restoration.generators.diffusion import build_model
    from rasr.restoration.generators.refdsr import RefDSR
    from tests.tiny_sd import build_tiny, make_fake_osediff_pkl, perturb_branch, save_tiny

    root = tmp_path_factory.mktemp("tiny-sd")
    comps = build_tiny(seed=0)
    base = save_tiny(comps, str(root / "sd-2-1-base"))
    pkl = make_fake_osediff_pkl(comps.unet, comps.vae, str(root / "osediff.pkl"))
    model, _ = build_model("refdsr", base, pkl, new_branch=True)
    assert isinstance(model, RefDSR)
    perturb_branch(model)
    branch = model.save_branch(str(root / "refdsr-branch"))
    return {"base": base, "osediff": pkl, "branch": branch}


@pytest.fixture(scope="session")
def niqe_prior():
    """NIQE's prior (packaged with rasr) as the .mat pyiqa reads, in the session cache."""
    from rasr.research import niqe_prior as prior

    return prior.prior_file()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a busy 2-core machine: two OpenMP threads spin against each other; one is steadier."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails loudly: proves a code path never reaches for the network."""
    import socket

    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f"network access to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
