"""infra/ and docs/deploy.md: every file parses and has the keys its tool needs, every `rasr ...` command
line in them parses with the real CLI, the files agree with each other and with prefect.yaml, and none
holds a secret. Fast: no Docker, no cluster, no network."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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
# `rasr ...` command lines: found in shell text, parsed with the real click CLI

SHELL_OPS = {"&&", "||", ";", "|", "&", "(", ")", "$("}
REDIRECT = re.compile(r"^[<>&]+$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"^\$\{?[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}?$")
IMAGE_REF = re.compile(r"(^|/)rasr:[^\s/]+$")
SUBCOMMAND_LIKE = re.compile(r"^-{0,2}[a-z][a-z0-9-]*$")
COMPOSE_RUN_VALUE_OPTS = {"-v", "--volume", "-e", "--env", "--entrypoint", "-w", "--workdir", "-u", "--user",
                          "--name", "-p", "--publish", "-l", "--label", "--cap-add", "--cap-drop"}


def logical_lines(text: str) -> list[str]:
    """Join backslash-continued lines."""
    lines, buf = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def shell_commands(text: str):
    """Simple commands (word lists) of shell text; lines that are not valid shell (prose) are skipped."""
    for line in logical_lines(text):
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            words = list(lex)
        except ValueError:
            continue
        cmd: list[str] = []
        for w in [*words, ";"]:
            if w in SHELL_OPS:
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(w)


def rasr_args(words: list[str]) -> list[str] | None:
    """The argument list of `rasr` if this command runs it (directly, or via the image or compose)."""
    while words and ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return None
    args = None
    if words[0] == "rasr":
        args = words[1:]
    elif words[:2] == ["docker", "compose"] and "run" in words:
        rest = words[words.index("run") + 1:]
        i = 0
        while i < len(rest) and rest[i].startswith("-"):
            if rest[i] == "--entrypoint" or rest[i].startswith("--entrypoint="):
                return None  # runs something else in the image
            i += 2 if rest[i] in COMPOSE_RUN_VALUE_OPTS else 1
        if i < len(rest) and rest[i] == "rasr":
            args = rest[i + 1:] or ["--help"]  # the image's CMD
    elif words[:2] == ["docker", "run"]:
        images = [i for i, w in enumerate(words) if IMAGE_REF.search(w)]
        if images and not any(w.startswith("--entrypoint") for w in words[:images[0]]):
            args = words[images[0] + 1:] or ["--help"]
    if args is None:
        return None
    for i, w in enumerate(args):
        if REDIRECT.match(w):
            args = args[:i]
            break
    if not args or not SUBCOMMAND_LIKE.match(args[0]):
        return None  # prose such as "rasr image: ..."
    return args


def rasr_command_lines(text: str) -> list[list[str]]:
    return [a for cmd in shell_commands(text) if (a := rasr_args(cmd)) is not None]


def comment_text(text: str) -> str:
    """The comments of a #-commented file, one per line, with the '#' removed."""
    return "\n".join(line.strip()[1:] if line.strip().startswith("#") else "" for line in text.splitlines())


def markdown_code(text: str) -> str:
    """The contents of the fenced code blocks of a markdown file."""
    return "\n".join(re.findall(r"^```[\w-]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE))


def sources_of_commands() -> list[tuple[str, list[str]]]:
    """(where, args) for every rasr command line in infra/ and docs/deploy.md."""
    found = []
    for path in infra_files():
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for args in rasr_command_lines(comment_text(text)):
            found.append((f"{where} (comment)", args))
        if path.suffix in (".yaml", ".yml", ".json"):
            doc = json.loads(text) if path.suffix == ".json" else load_yaml(path)
            for s in walk_strings(doc):
                for args in rasr_command_lines(s):
                    found.append((where, args))
    entry, cmd = dockerfile_exec_form("ENTRYPOINT"), dockerfile_exec_form("CMD")
    found.append(("infra/Dockerfile ENTRYPOINT+CMD", [*entry[1:], *(cmd or [])]))
    for args in rasr_command_lines(markdown_code(DOCS.read_text())):
        found.append(("docs/deploy.md", args))
    return found


def _sample_value(param: click.Parameter, token: str) -> str:
    """A value of the right type for an env-var placeholder (`$X`, `${X}`) given to a typed option."""
    t = param.type
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, (click.types.IntParamType, click.types.IntRange)):
        return "1"
    if isinstance(t, (click.types.FloatParamType, click.types.FloatRange)):
        return "1.0"
    if isinstance(t, click.types.BoolParamType):
        return "true"
    return token


def _fill_placeholders(command: click.Command, args: list[str]) -> list[str]:
    options = {name: p for p in command.params if isinstance(p, click.Option) for name in p.opts}
    out = list(args)
    for i, tok in enumerate(out):
        name, eq, value = tok.partition("=")
        p = options.get(name)
        if p is None or p.is_flag:
            continue
        if eq and PLACEHOLDER.match(value):
            out[i] = f"{name}={_sample_value(p, value)}"
        elif not eq and i + 1 < len(out) and PLACEHOLDER.match(out[i + 1]):
            out[i + 1] = _sample_value(p, out[i + 1])
    return out


def parse_cli(args: list[str]) -> click.Context | None:
    """Parse like `rasr ARGS` down the subcommand chain (callbacks never run); None after --help.

    Unknown commands or options, missing arguments and bad values raise click.UsageError."""
    from flows.cli import main

    command: click.Command = main
    name, parent, rest = "rasr", None, list(args)
    try:
        while True:
            ctx = command.make_context(name, _fill_placeholders(command, rest), parent=parent)
            if not isinstance(command, click.Group):
                return ctx
            protected = getattr(ctx, "_protected_args", None)
            if protected is None:
                protected = ctx.protected_args
            sub, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
            name, parent = sub, ctx
    except click.exceptions.Exit as e:
        if e.exit_code == 0:
            return None  # --help
        raise


def test_command_finder_and_parser_catch_mistakes():
    assert rasr_command_lines("rasr index g --db d.lance && echo ok") == [["index", "g", "--db", "d.lance"]]
    assert rasr_command_lines("docker compose -f infra/compose.yaml run --rm -v /a:/b rasr sample demo") == [
        ["sample", "demo"]]
    assert rasr_command_lines("docker compose run --rm --entrypoint prefect rasr deploy --all") == []
    assert rasr_command_lines("docker run --rm --gpus all rasr:0.1.0 search x.jpg --db d") == [
        ["search", "x.jpg", "--db", "d"]]
    assert rasr_command_lines("kubectl create namespace rasr") == []
    assert rasr_command_lines("rasr --help > /dev/null") == [["--help"]]
    assert parse_cli(["enhance", "in", "out", "--workers", "$N", "--generator", "${GEN}"]).params["workers"] == 1
    assert parse_cli(["dataset", "build", "src", "out", "--top-k", "3"]).params["top_k"] == 3
    assert parse_cli(["--help"]) is None
    for bad in (["enhance", "in", "out", "--no-such-option"], ["enhanse", "in", "out"], ["index", "g"],
                ["enhance", "in", "out", "--workers", "four"], ["dataset"], ["dataset", "biuld", "a", "b"]):
        with pytest.raises(click.UsageError):
            parse_cli(bad)


def test_every_rasr_command_line_parses_with_the_real_cli():
    found = sources_of_commands()
    wheres = {w for w, _ in found}
    # the files that must show rasr commands do
    assert "docs/deploy.md" in wheres and "infra/kuberay/rayjob.yaml" in wheres and "infra/ray/cluster.yaml" in wheres
    subcommands = {a[0] for w, a in found if w == "docs/deploy.md"}
    assert {"index", "enhance"} <= subcommands, subcommands
    errors = []
    for where, args in found:
        try:
            parse_cli(args)
        except click.ClickException as e:
            errors.append(f"{where}: rasr {shlex.join(args)}\n    -> {e.format_message()}")
    assert not errors, "rasr command lines that the CLI rejects:\n" + "\n".join(errors)


def test_worker_resources_in_commands_name_resources_the_clusters_advertise():
    advertised = set()
    for t in load_yaml(CLUSTER)["available_node_types"].values():
        advertised |= set(t.get("resources", {}))
    for group in load_yaml(RAYCLUSTER)["spec"]["workerGroupSpecs"]:
        advertised |= set(_group_custom_resources(group))
    used = 0
    for where, args in sources_of_commands():
        ctx = parse_cli(args)
        spec = ctx.params.get("worker_resources") if ctx is not None else None
        if spec:
            used += 1
            missing = set(spec) - advertised  # the CLI parses the JSON into {resource: amount}
            assert not missing, f"{where}: --worker-resources asks for {missing}, no node type has it"
    assert used, "no command shows how to pin actors with --worker-resources"


# ---------------------------------------------------------------------------------------------------
# image


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


# ---------------------------------------------------------------------------------------------------
# Ray cluster launcher


def test_ray_cluster_launcher_config():
    cfg = load_yaml(CLUSTER)
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "docker", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head.get("resources", {}).get("GPU"), "the head is a CPU node"
    gpu_types = {name: t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0}
    assert len(gpu_types) >= 2
    seen = set()
    for name, t in gpu_types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
        res = t["resources"]
        kinds = [g for g in GPU_TYPES if g in res]
        assert len(kinds) == 1 and res[kinds[0]] == res["GPU"], f"{name}: one GPU-type resource per GPU"
        assert t["node_config"]["InstanceType"], name
        seen |= set(kinds)
    assert seen == set(GPU_TYPES)
    assert cfg["docker"]["image"].endswith(":" + cfg["docker"]["image"].rsplit(":", 1)[1])
    # the image's ENTRYPOINT is rasr, and the launcher runs `docker run ... IMAGE bash`
    assert "--entrypoint=''" in cfg["docker"]["run_options"]
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--disable-usage-stats" in head_start
    assert "ray start --address" in " ".join(cfg["worker_start_ray_commands"])
    assert CLUSTER.read_text().startswith("#")


def test_ray_cluster_launcher_config_passes_rays_own_validation():
    """The schema and checks `ray up` applies before it touches the cloud (no cloud call here)."""
    pytest.importorskip("jsonschema")
    try:  # Ray's own (private) helpers; skip rather than fail if a Ray upgrade moves them
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        pytest.skip("ray.autoscaler._private.util moved")

    validate_config(prepare_config(load_yaml(CLUSTER)))


# ---------------------------------------------------------------------------------------------------
# KubeRay


def _group_custom_resources(group: dict) -> dict:
    text = group["rayStartParams"].get("resources")
    return json.loads(shlex.split(text)[0]) if text else {}


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


def _assert_env_secrets_by_reference(env: list[dict], where: str) -> None:
    for item in env:
        if names_a_secret(item["name"]) or item["name"] == "AWS_ACCESS_KEY_ID":
            assert "value" not in item, f"{where}: {item['name']} has a literal value"
            assert "secretKeyRef" in item["valueFrom"], f"{where}: {item['name']} must come from a Secret"


def test_kuberay_raycluster():
    rc = load_yaml(RAYCLUSTER)
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["rayVersion"] == dockerfile_args()["RAY_VERSION"]
    assert spec.get("enableInTreeAutoscaling") is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert _container(head)["image"] == the_image()
    env_names = {e["name"] for e in _container(head)["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env_names
    _assert_env_secrets_by_reference(_container(head)["env"], "head")
    seen = set()
    for g in spec["workerGroupSpecs"]:
        c = _container(g)
        assert c["image"] == the_image()
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and str(gpus) == g["rayStartParams"]["num-gpus"], g["groupName"]
        custom = _group_custom_resources(g)
        kinds = [k for k in GPU_TYPES if k in custom]
        assert len(kinds) == 1 and custom[kinds[0]] == gpus, g["groupName"]
        seen |= set(kinds)
        _assert_env_secrets_by_reference(c["env"], g["groupName"])
    assert seen == set(GPU_TYPES)


def test_kuberay_rayjob_runs_a_rasr_command_on_the_cluster():
    job = load_yaml(RAYJOB)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"]
    assert entry.startswith("rasr ")
    assert parse_cli(shlex.split(entry)[1:]) is not None
    rc = load_yaml(RAYCLUSTER)
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    assert job["metadata"]["namespace"] == rc["metadata"]["namespace"]


# ---------------------------------------------------------------------------------------------------
# compose


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


# ---------------------------------------------------------------------------------------------------
# Prefect work pools


def prefect_pools() -> set[str]:
    return {p["name"] for p in load_yaml(ROOT / "prefect.yaml")["definitions"]["work_pools"].values()}


def test_job_template_is_a_kubernetes_base_job_template_with_one_gpu():
    from prefect.utilities.templating import apply_values, find_placeholders

    t = json.loads(JOB_TEMPLATE.read_text())
    assert set(t) == {"job_configuration", "variables"}
    variables = t["variables"]
    assert variables["type"] == "object"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(variables)
    props = variables["properties"]
    used = {p.name for p in find_placeholders(t["job_configuration"])}
    assert used <= set(props), f"placeholders without a variable: {used - set(props)}"
    assert props["image"]["default"] == the_image()
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    jsonschema.validate(values, variables)  # the defaults fit the pool's own schema
    values |= {"command": "prefect flow-run execute", "env": {}, "name": "run", "labels": {}}
    manifest = apply_values(t["job_configuration"], values)["job_manifest"]
    assert manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    c = pod["containers"][0]
    assert c["name"] == "prefect-job"  # the Kubernetes worker requires this name
    assert c["image"] == the_image()
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    # the image's ENTRYPOINT is `rasr`: Prefect's command must not be appended to it
    assert c["command"] and c["command"] != ["rasr"]
    env = {e["name"]: e for e in c["env"]}
    assert env["RAY_ADDRESS"]["value"].startswith("ray://")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    _assert_env_secrets_by_reference(c["env"], "gpu-job-template")


def test_work_pools_named_anywhere_exist_in_prefect_yaml():
    pools = prefect_pools()
    docs = DOCS.read_text()
    named = set(re.findall(r"(?:--pool|work-pool (?:create|update))\s+([\w-]+)|workPool=([\w-]+)", docs))
    named = {n for pair in named for n in pair if n}
    worker_cmd = load_yaml(COMPOSE)["services"]["worker"]["command"]
    named.add(worker_cmd[worker_cmd.index("--pool") + 1])
    description = json.loads(JOB_TEMPLATE.read_text())["variables"]["description"]
    named |= set(re.findall(r"^(rasr-[a-z]+):", description))
    named |= set(re.findall(r"prefect work-pool create ([\w-]+)", description))
    assert named and named <= pools, f"work pools not in prefect.yaml: {named - pools}"
    created = set(re.findall(r"work-pool create ([\w-]+)", docs))
    assert pools <= created, f"docs/deploy.md never creates {pools - created}"


# ---------------------------------------------------------------------------------------------------
# the walkthrough and the absence of secrets


def test_docs_walk_through_every_infra_file_and_deployment():
    docs = DOCS.read_text()
    for path in infra_files():
        if path.name in (".gitignore", "Dockerfile.dockerignore"):
            continue
        rel = str(path.relative_to(ROOT))
        assert rel in docs or (path.parent.name == "kuberay" and "infra/kuberay/" in docs), f"docs miss {rel}"
    for deployment in load_yaml(ROOT / "prefect.yaml")["deployments"]:
        assert deployment["name"] in docs, deployment["name"]


def test_no_python_logic_in_infra():
    assert not [p for p in infra_files() if p.suffix == ".py"]


def test_every_infra_file_opens_with_what_it_achieves():
    for path in infra_files():
        if path.suffix == ".json":  # no comments in JSON: the template says it in its description
            assert "rasr" in json.loads(path.read_text())["variables"]["description"]
        else:
            assert path.read_text().startswith("#"), f"{path.relative_to(ROOT)} should open with a comment"


KEY_VALUE = re.compile(r"(?<![\w{$.-])([A-Za-z][A-Za-z0-9_]*)[\"']?[ \t]*[:=][ \t]*[\"']?([^\s\"',}]*)")
SECRET_WORDS = {"PASSWORD", "PASSWD", "SECRET", "TOKEN"}


def names_a_secret(key: str) -> bool:
    """MINIO_ROOT_PASSWORD, aws_secret_access_key, password: yes; secretKeyRef, TOKENIZERS_PARALLELISM: no."""
    if key != key.upper() and key != key.lower():
        return False  # camelCase keys are manifest structure (secretKeyRef, extraEnvVarsSecret)
    up = key.upper()
    if up.split("_")[-1] in ("NAME", "FIELDS", "BLOCK", "REF", "FILE", "PATH"):
        return False  # names a secret, does not hold one (s3_secret_name, RASR_S3_SECRET_BLOCK)
    return bool(SECRET_WORDS & set(up.split("_"))) or "AUTH_STRING" in up or up.endswith("API_KEY")


def is_placeholder(value: str) -> bool:
    return (not value or value.startswith(("$", "{", "[", "os.environ")) or "change-me" in value
            or value in ("...", "true", "false"))


def test_secret_scanner_catches_literals():
    text = ('password: hunter2\nMINIO_ROOT_PASSWORD=s3cr3t\n"aws_secret_access_key": "abc"\n'
            'key: ${POSTGRES_PASSWORD:?set it}\nsecretKeyRef: {name: rasr-s3}\nTOKENIZERS_PARALLELISM=false')
    hits = [m.group(1) for m in KEY_VALUE.finditer(text)
            if names_a_secret(m.group(1)) and not is_placeholder(m.group(2))]
    assert hits == ["password", "MINIO_ROOT_PASSWORD", "aws_secret_access_key"]


def test_no_secret_literals_in_infra_or_docs():
    problems = []
    for path in [*infra_files(), DOCS]:
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        if re.search(r"AKIA[0-9A-Z]{16}", text):
            problems.append(f"{where}: an AWS access key id")
        if "PRIVATE KEY-----" in text:
            problems.append(f"{where}: a private key")
        for m in re.finditer(r"://[^/\s:@]+:([^@\s/]+)@", text):
            if not m.group(1).startswith("${"):
                problems.append(f"{where}: credentials in a URL: {m.group(0)}")
        for m in KEY_VALUE.finditer(text):
            if names_a_secret(m.group(1)) and not is_placeholder(m.group(2)):
                problems.append(f"{where}: {m.group(1)} = {m.group(2)!r} looks like a literal secret")
    assert not problems, "\n".join(problems)


def test_report_tests_skip_naming_the_install_command_where_chromium_is_missing(monkeypatch):
    from tests import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install chromium"):
        browser.chromium()
    assert "apt-get install" in (ROOT / "scripts" / "setup.sh").read_text()  # set-up installs it where it can
