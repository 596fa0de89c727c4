"""The one-host setup (infra/compose.yaml and infra/.env.example): its services, and every secret from the
env file."""

from __future__ import annotations

import re

from tests.infra.files import COMPOSE, ENV_EXAMPLE, dockerfile_args, load_yaml, names_a_secret


def compose_vars(text: str) -> set[str]:
    """Variables interpolated by compose: ${VAR}, ${VAR:-x}, ${VAR:?msg} (not $$VAR, which is the container's)."""
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_compose_one_host_setup():
    c = load_yaml(COMPOSE)
    services = c["services"]
    for name in ("minio", "minio-init", "postgres", "prefect-server", "worker"):
        assert name in services, name
    for name in ("minio", "postgres", "prefect-server", "worker"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["image"] == f"prefecthq/prefect:{dockerfile_args()['PREFECT_VERSION']}-python3.11"
    assert "mc mb" in services["minio-init"]["command"][0]
    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "infra/Dockerfile" and worker["build"]["context"] == ".."
    command = " ".join([*worker["entrypoint"], *worker["command"]])
    assert command.startswith("prefect worker start --pool ")
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for var in ("RASR_ARCHIVE", "RASR_OUTPUT", "RASR_GALLERY", "RASR_DB", "RAY_ADDRESS", "AWS_ENDPOINT_URL"):
        assert var in env, var
    used_volumes = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                    if not v.startswith((".", "/"))}
    assert used_volumes <= set(c["volumes"])
    assert COMPOSE.read_text().startswith("#")


def test_compose_takes_every_secret_from_env_file():
    c = load_yaml(COMPOSE)
    for name, service in c["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if names_a_secret(key) or key.startswith("AWS_ACCESS_KEY"):
                assert re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}", str(value)), \
                    f"{name}.{key} must be a required ${{VAR:?message}} interpolation, got {value!r}"
    required = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*):\?", COMPOSE.read_text()))
    defined = set(env_example())
    assert required <= defined, f"required variables of compose.yaml missing from .env.example: {required - defined}"
    assert set(defined) <= compose_vars(COMPOSE.read_text()), "every .env.example setting is used by compose.yaml"


def test_env_example_holds_placeholders_only():
    values = env_example()
    secrets = {k: v for k, v in values.items() if names_a_secret(k)}
    assert secrets, "the secrets compose needs are listed"
    for k, v in secrets.items():
        assert "change-me" in v, f"{k} in .env.example must be a change-me placeholder"
