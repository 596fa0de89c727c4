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

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rasr import samples  # noqa: E402


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """All bundled real photos as RGB uint8."""
    return {n: samples.as_rgb(samples.load_photo(n)) for n in samples.photo_names()}


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return samples.as_rgb(samples.load_photo("chelsea"))
