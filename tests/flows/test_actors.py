"""Sizing of the model-actor pool from the cluster (no Ray needed)."""

import pytest

from tasks.actors import PoolSpec
from tasks.cluster import parse_resources


@pytest.mark.parametrize("cluster, nodes, expect", [
    ({"CPU": 2}, [2], (1, 0.0, 1.5)),                       # laptop: one CPU actor
    ({"CPU": 2}, [1, 1], (1, 0.0, 0.5)),                    # two 1-CPU nodes: must fit on one
    ({"CPU": 64, "GPU": 8}, [32, 32], (8, 1.0, 4.0)),        # one actor per GPU, CPUs capped at 4
    ({"CPU": 16, "GPU": 2}, [16], (2, 1.0, 4.0)),
])
def test_defaults_follow_the_cluster(cluster, nodes, expect, monkeypatch):
    for name in ("RASR_WORKERS", "RASR_GPUS_PER_WORKER", "RASR_CPUS_PER_WORKER"):
        monkeypatch.delenv(name, raising=False)
    s = PoolSpec().resolve(cluster, nodes)
    assert (s.workers, s.gpus_per_worker, s.cpus_per_worker) == expect


def test_environment_sets_defaults_for_autoscaling_clusters(monkeypatch):
    monkeypatch.setenv("RASR_WORKERS", "4")
    monkeypatch.setenv("RASR_GPUS_PER_WORKER", "1")
    s = PoolSpec().resolve({"CPU": 4}, [4])  # no GPU node yet: the autoscaler will add them
    assert (s.workers, s.gpus_per_worker) == (4, 1.0)
    assert PoolSpec(workers=2, gpus_per_worker=0).resolve({"CPU": 4}, [4]).workers == 2  # flags win


def test_resources_json_is_validated():
    assert parse_resources('{"h100": 1}') == {"h100": 1.0}
    with pytest.raises(ValueError, match="JSON object"):
        parse_resources("h100=1")
