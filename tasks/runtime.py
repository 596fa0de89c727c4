"""Ray connection and process hygiene for tasks and flows.

Embedded default: Ray started locally in this process. Production: RAY_ADDRESS (or --ray-address)
points at a cluster whose GPU worker groups run the actors. Telemetry that would hang offline is off.
"""

from __future__ import annotations

import logging
import os

import ray  # its settings (QUIET_ENV) are read when Ray starts, not on import: init_ray sets them first

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",          # else Ray writes ~/.ray/auth_token
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "LANCE_LOG": "error",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_environment() -> None:
    """Turn off usage statistics and chatty logs; users' explicit settings win."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import warnings

    # lancedb warns in every child that Ray forks only to exec a worker (5 times per run); nothing in
    # that child uses LanceDB, so the warning says nothing a user can act on. The filter is inherited.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)




def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = False) -> dict:
    """Connect to RAY_ADDRESS / `address`, or start Ray locally; returns the cluster's resources."""
    quiet_environment()  # before Ray starts: its usage statistics would wait on a network it may not reach
    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": verbose,
                    "logging_level": logging.INFO if verbose else logging.ERROR}
    if address:
        ray.init(address=address, **kwargs)
    else:
        cpus = num_cpus or os.cpu_count() or 1
        # a small object store: we pass URIs and manifest rows between processes, never images
        ray.init(num_cpus=cpus, object_store_memory=int(os.environ.get("RASR_OBJECT_STORE", 5e8)), **kwargs)
    return ray.cluster_resources()


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
