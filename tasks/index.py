"""Prefect task: embed one shard of gallery files on the embedding actors."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NONE

from rasr.catalog import Item
from tasks import progress
from tasks.actors import ActorPool
from tasks.runtime import ray


@task(name="embed-shard", cache_policy=NONE, retries=1, retry_delay_seconds=2)
def embed_shard(items: list[dict], pool: ActorPool, batch_size: int, progress_key: str = "") -> tuple[list[dict], list[dict]]:
    """Embed a list of gallery files; returns (table rows, {uri, error} for unusable files)."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    pending = [pool.next().embed.remote(b) for b in batches]
    rows, errors = [], []
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        r, e = ray.get(done[0])
        rows.extend(r)
        errors.extend(e)
        progress.advance(progress_key, len(r) + len(e))
    return rows, errors


def as_dicts(items: list[Item]) -> list[dict]:
    return [asdict(i) for i in items]
