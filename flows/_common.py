"""What the flows share: run ids and publishing summaries as Prefect artifacts."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed, wait

from rasr import storage


def new_run_id() -> str:
    """Sortable, unique: 20261126T020000Z-1a2b3c."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def publish_summary(key: str, summary: dict, errors: list[dict] | None = None, title: str = "",
                    thumbnails: list[tuple[str, bytes, bytes]] | None = None) -> None:
    """A table artifact with the summary (+ a markdown artifact listing failures and thumbnails)."""
    rows = [{"field": k, "value": str(v)} for k, v in summary.items() if not isinstance(v, (list, dict))]
    create_table_artifact(table=rows, key=key, description=title or key)
    parts = [f"# {title or key}", ""]
    if errors:
        parts += [f"## {len(errors)} failed", "", "| input | reason |", "|---|---|"]
        parts += [f"| {e.get('uri') or e.get('source_uri')} | {str(e.get('error')).replace('|', '/')} |"
                  for e in errors[:200]]
        if len(errors) > 200:
            parts.append(f"| ... | {len(errors) - 200} more in the manifest |")
    if thumbnails:
        parts += ["", "## Examples (input | output)", ""]
        for name, before, after in thumbnails:
            b = base64.b64encode(before).decode()
            a = base64.b64encode(after).decode()
            parts.append(f"**{name}**  \n![in](data:image/jpeg;base64,{b}) ![out](data:image/jpeg;base64,{a})\n")
    if errors or thumbnails:
        create_markdown_artifact(markdown="\n".join(parts), key=f"{key}-details", description=title or key)


def run_bounded(shards: list, submit, limit: int) -> tuple[list[dict], list[dict]]:
    """Submit shard tasks keeping at most `limit` in flight (a crash then loses little work).

    Returns (results of finished shards, [{"error": ...}] of failed ones); one failure never stops
    the others."""
    results, failures, inflight = [], [], []

    def collect(futures):
        for fut in futures:
            try:
                results.append(fut.result())
            except Exception as e:  # noqa: BLE001 - shards are independent
                failures.append({"error": storage.redact(f"{e.__class__.__name__}: {e}")})

    for shard in shards:
        if len(inflight) >= limit:
            first = next(as_completed(inflight))
            collect([first])
            inflight = [f for f in inflight if f is not first]
        inflight.append(submit(shard))
    collect(wait(inflight).done)
    return results, failures
