"""Where a flow's actors run: the options every actor-starting flow and command share (no Ray import,
so the command line can offer them before anything starts)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rasr.options import STRICT, option


def parse_resources(text: str | None) -> dict:
    """--worker-resources '{"h100": 1}' -> {"h100": 1.0}."""
    if not text:
        return {}
    try:
        value = json.loads(text)
        assert isinstance(value, dict)
        return {str(k): float(v) for k, v in value.items()}
    except Exception:  # noqa: BLE001 - any parse or type failure: one message with the expected shape
        raise ValueError(f'--worker-resources must be a JSON object like {{"gpu_worker": 1}}, got {text!r}') from None


def ray_address_option():
    return option(None, "Ray cluster to use (default $RAY_ADDRESS, else a local Ray).", envvar="RAY_ADDRESS")


@dataclass
class Cluster:
    """Where a flow's actors run: every flow that starts actors takes one (command line: the worker
    options); the defaults fit the cluster found (RAY_ADDRESS, else a local Ray)."""

    __pydantic_config__ = STRICT

    workers: int | None = option(None, "Model actors to start (default: one per GPU, else 1).", low=1)
    gpus_per_worker: float | None = option(None, "GPUs each actor asks Ray for (default: 1 if the cluster has "
                                                 "GPUs, else 0).", low=0)
    worker_resources: dict = option(help='Custom Ray resources per actor, e.g. \'{"gpu_worker": 1}\'.', factory=dict,
                                    metavar="JSON", parse=parse_resources)
    ray_address: str | None = ray_address_option()


@dataclass
class TrainScaling:
    """Where training runs: in this process, or data parallel on Ray Train (one worker per GPU)."""

    __pydantic_config__ = STRICT

    engine: str = option("local", "local: one process; ray: data parallel on Ray Train (TorchTrainer).",
                         choices=("local", "ray"))
    workers: int = option(1, "Ray Train workers (one per GPU).", low=1)
    use_gpu: bool = option(False, "One GPU per Ray Train worker.", flags=("--gpu",))
    cpus_per_worker: float = option(1.0, "CPUs per Ray Train worker.", low=0)
    ray_address: str | None = ray_address_option()
    device: str | None = option(None, "Torch device of the local engine (default: the best available).", cli=False)

