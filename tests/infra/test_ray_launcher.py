"""The Ray cluster launcher's config (infra/ray/cluster.yaml): a CPU head, one GPU-type resource per GPU
node type, and Ray's own validation passes (no cloud call)."""

from __future__ import annotations

import pytest

from tests.infra.files import CLUSTER, GPU_TYPES, load_yaml


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
