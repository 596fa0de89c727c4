"""Flow `nightly_enhance`: enhance only what arrived since the last completed run.

The watermark lives in the output location (<out>/_state/watermark.json), not in Prefect's database,
so it survives a new Prefect server and is visible to anyone reading the outputs. It records when the
last *completed* run listed its inputs; a failed run leaves it alone, so the next night retries.
Inputs modified up to `grace_seconds` before the watermark are listed again (clock skew, slow
uploads); the done-markers make sure none of them is enhanced twice. The results page
(<out>/report/index.html, linked from the run's summary artifact) lists that night's new photos first:
enhance_archive writes it with its own run's rows first.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows.enhance import enhance_archive
from rasr import runlog
from rasr.restoration.enhance_run import EnhanceConfig, output_for
from tasks.cluster import Cluster

@flow(name="nightly-enhance")
def nightly_enhance(input: str, output: str, config: EnhanceConfig | None = None, cluster: Cluster | None = None,
                    grace_seconds: float = 3600.0) -> dict:
    """Enhance the inputs that are new since the watermark, then move the watermark forward."""
    flow_setup(config, cluster)
    log = get_run_logger()
    cfg = config or EnhanceConfig()
    target = output_for(cfg, input, output)  # enhance_archive nests the same way
    wm = runlog.read_watermark(target)
    listed_at = time.time()
    since = None if wm is None else wm["listed_at"] - grace_seconds
    log.info("first run: every input" if wm is None else
             f"inputs modified since {dt.datetime.fromtimestamp(since, dt.timezone.utc).isoformat()}")
    # vanished inputs are the weekly collect-stale deployment's (flows/gc.py): a night does only the night's work
    summary = enhance_archive(input, output, cfg, cluster, since=since)
    runlog.write_watermark(target, listed_at, summary, wm)
    return summary
