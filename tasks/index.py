"""Prefect task: embed one shard of gallery files on the embedding actors."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NONE

from rasr import catalog
from rasr.catalog import Item
from tasks import progress
from tasks.actors import ActorPool


@task(name="embed-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def embed_shard(items: list[dict], pool: ActorPool, batch_size: int, progress_key: str = "") -> tuple[list[dict], list[dict]]:
    """Embed a list of gallery files; returns (table rows, {uri, error} for unusable files)."""
    rows, errors = [], []
    for _, (r, e), _ in pool.as_completed("embed", [(b,) for b in catalog.chunks(items, batch_size)]):
        rows.extend(r)
        errors.extend(e)
        progress.advance(progress_key, len(r) + len(e))
    return rows, errors


def as_dicts(items: list[Item]) -> list[dict]:
    return [asdict(i) for i in items]
