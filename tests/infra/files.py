"""The deployment files under infra/ and the readers the tests of tests/infra/ share: paths, YAML, the
Dockerfile's instructions, the image every cluster-side file runs, KubeRay groups and what names a secret."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCS = ROOT / "docs" / "deploy.md"

CLUSTER = INFRA / "ray" / "cluster.yaml"
RAYCLUSTER = INFRA / "kuberay" / "raycluster.yaml"
RAYJOB = INFRA / "kuberay" / "rayjob.yaml"
DOCKERFILE = INFRA / "Dockerfile"
DOCKERIGNORE = INFRA / "Dockerfile.dockerignore"
COMPOSE = INFRA / "compose.yaml"
ENV_EXAMPLE = INFRA / ".env.example"
JOB_TEMPLATE = INFRA / "work-pool" / "gpu-job-template.json"

GPU_TYPES = ("a100", "h100")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def infra_files() -> list[Path]:
    """The committed deployment files (a local infra/.env with real secrets is git-ignored and skipped)."""
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.name != ".env")


def walk_strings(node):
    """Every string value in a parsed YAML/JSON document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_strings(v)


# ---------------------------------------------------------------------------------------------------
# Dockerfile facts


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        text = (buf + line).strip()
        buf = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_args() -> dict[str, str]:
    args = {}
    for word, rest in dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip().strip('"')
    return args


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                k, _, v = item.partition("=")
                env[k] = v
    return env


def dockerfile_exec_form(instruction: str) -> list[str] | None:
    found = [rest for word, rest in dockerfile_instructions() if word == instruction]
    return json.loads(found[-1]) if found else None


def the_image() -> str:
    """The registry image every cluster-side file must run (one tag to bump on upgrades)."""
    return load_yaml(CLUSTER)["docker"]["image"]


# ---------------------------------------------------------------------------------------------------
# cluster-side manifests (KubeRay, the work pool's job template) and secrets


def group_custom_resources(group: dict) -> dict:
    text = group["rayStartParams"].get("resources")
    return json.loads(shlex.split(text)[0]) if text else {}


def assert_env_secrets_by_reference(env: list[dict], where: str) -> None:
    for item in env:
        if names_a_secret(item["name"]) or item["name"] == "AWS_ACCESS_KEY_ID":
            assert "value" not in item, f"{where}: {item['name']} has a literal value"
            assert "secretKeyRef" in item["valueFrom"], f"{where}: {item['name']} must come from a Secret"


SECRET_WORDS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN"}


def names_a_secret(key: str) -> bool:
    """MINIO_ROOT_PASSWORD, aws_secret_access_key, password: yes; secretKeyRef, TOKENIZERS_PARALLELISM: no."""
    if key != key.upper() and key != key.lower():
        return False  # camelCase keys are manifest structure (secretKeyRef, extraEnvVarsSecret)
    up = key.upper()
    if up.split("_")[-1] in ("NAME", "FIELDS", "BLOCK", "REF", "FILE", "PATH"):
        return False  # names a secret, does not hold one (s3_secret_name, RASR_S3_SECRET_BLOCK)
    return bool(SECRET_WORDS & set(up.split("_"))) or "AUTH_STRING" in up or up.endswith("API_KEY")
