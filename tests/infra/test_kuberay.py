"""KubeRay (infra/kuberay/): the RayCluster runs the image with secrets by reference, and the RayJob a
`rasr` command on that cluster."""

from __future__ import annotations

import shlex

from tests.infra.commands import parse_cli
from tests.infra.files import (GPU_TYPES, RAYCLUSTER, RAYJOB, assert_env_secrets_by_reference, dockerfile_args,
                               group_custom_resources, load_yaml, the_image)


def _container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]


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
    assert_env_secrets_by_reference(_container(head)["env"], "head")
    seen = set()
    for g in spec["workerGroupSpecs"]:
        c = _container(g)
        assert c["image"] == the_image()
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and str(gpus) == g["rayStartParams"]["num-gpus"], g["groupName"]
        custom = group_custom_resources(g)
        kinds = [k for k in GPU_TYPES if k in custom]
        assert len(kinds) == 1 and custom[kinds[0]] == gpus, g["groupName"]
        seen |= set(kinds)
        assert_env_secrets_by_reference(c["env"], g["groupName"])
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
