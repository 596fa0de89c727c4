"""The image (infra/Dockerfile, its .dockerignore): built as described, `rasr` its entrypoint, no secrets in it."""

from __future__ import annotations

import re

import click
import pytest

from tests.infra.files import (DOCKERFILE, DOCKERIGNORE, INFRA, ROOT, dockerfile_args, dockerfile_env,
                               dockerfile_exec_form, dockerfile_instructions)


def test_image_entrypoint_is_the_console_script():
    assert dockerfile_exec_form("ENTRYPOINT") == ["rasr"]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rasr"] == "flows.cli:main"
    from flows.cli import main

    assert isinstance(main, click.Group)


def test_dockerfile_builds_the_project_as_described():
    instructions = dockerfile_instructions()
    words = [w for w, _ in instructions]
    assert words[0] in ("FROM", "ARG") and "FROM" in words
    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    assert re.search(r"pip install [^&]*torch", runs) and "torchvision" in runs
    assert re.search(r"pip install \.(\s|$)", runs), "the project itself is installed with `pip install .`"
    assert "python -m rasr.research.niqe_prior" in runs
    from importlib.util import find_spec

    assert find_spec("rasr.research.niqe_prior") is not None
    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    env = dockerfile_env()
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert env.get("DO_NOT_TRACK") == "1"
    assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    args = dockerfile_args()
    for name in ("RAY_VERSION", "PREFECT_VERSION", "TORCH_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", args[name]), f"{name} is pinned"
    assert DOCKERFILE.read_text().startswith("#"), "files open with a comment saying what they achieve"


def test_dockerignore_keeps_secrets_and_local_state_out():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for must in (".git", ".venv", ".env", "**/.env"):
        assert must in patterns, must
    assert (INFRA / ".gitignore").read_text().count(".env") >= 1
