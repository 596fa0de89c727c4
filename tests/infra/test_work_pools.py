"""Prefect work pools: the GPU job template (infra/work-pool/) is a Kubernetes base job template with one
GPU, and every pool named anywhere is one of prefect.yaml's."""

from __future__ import annotations

import json
import re

import pytest

from tests.infra.files import (COMPOSE, DOCS, JOB_TEMPLATE, ROOT, assert_env_secrets_by_reference, load_yaml,
                               the_image)


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
    assert_env_secrets_by_reference(c["env"], "gpu-job-template")


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
