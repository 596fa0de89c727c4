"""Flow `collect_stale`: the weekly clean-up, apart from the nightly run (whose cost follows the night's photos).

One listing of INPUT decides which enhanced inputs vanished; their manifest rows, images and run-state entries are
removed with `apply` (else only counted), and temporary files of killed writes are removed from where writes are
staged. The CLI's `rasr gc OUTPUT --input INPUT [--apply]` does the same without Prefect.
"""

from __future__ import annotations

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import gc, storage


@flow(name="collect-stale")
def collect_stale(input: str | None, output: str, apply: bool = False) -> dict:
    """Find (and with `apply` remove) what inputs that no longer exist left under `output`."""
    flow_setup()
    log = get_run_logger()
    stale = gc.find_stale(output, input)
    if stale.sources:
        log.warning(f"{len(stale.sources)} inputs enhanced earlier no longer exist (e.g. "
                    f"{storage.redact(stale.sources[0])})" + ("" if apply else ": pass apply=true to remove"))
    summary = {"output": storage.redact(output), **gc.apply_or_count(output, stale, apply)}
    publish_summary("gc-summary", summary, title="Stale outputs")
    return summary
