"""What the flows share: run ids and publishing summaries as Prefect artifacts."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import pathlib
import uuid

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import as_completed, wait

from rasr import catalog, storage


def new_run_id() -> str:
    """Sortable, unique: 20261126T020000Z-1a2b3c."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def publish_summary(key: str, summary: dict, errors: list[dict] | None = None, title: str = "",
                    thumbnails: list[tuple[str, bytes, bytes]] | None = None, report: str | None = None) -> None:
    """A table artifact with the summary (+ a markdown artifact linking the results page `report` and
    listing failures and thumbnails)."""
    rows = [{"field": k, "value": str(v)} for k, v in summary.items() if not isinstance(v, (list, dict))]
    create_table_artifact(table=rows, key=key, description=title or key)
    parts = [f"# {title or key}", ""]
    if report:
        if storage.is_remote(report):  # no presigned URL: it would put a signature in Prefect's database
            parts += [f"**Results page:** `{report}` (open it from a copy: `aws s3 sync "
                      f"{report.rsplit('/', 1)[0]} report/`)", ""]
        else:
            parts += [f"**Results page:** [{report}]({pathlib.Path(os.path.abspath(report)).as_uri()})", ""]
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
    if errors or thumbnails or report:
        create_markdown_artifact(markdown="\n".join(parts), key=f"{key}-details", description=title or key)


def process_shards(actor_cls, cfg: dict, shards: list, out: str, run_id: str, cfg_hash: str, schemas: dict,
                   per_call: int, label: str, show_progress: bool, max_inflight: int | None = None,
                   workers: int | None = None, gpus_per_worker: float | None = None, resources: dict | None = None,
                   address: str | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """Run `shards` with `actor_cls(cfg)` actors and a progress bar; returns (results, failures, placement).

    per_call: inputs sent to an actor per call.
    At most `max_inflight` shards (default: workers + 1) are in flight, so a crash loses little work."""
    from tasks import progress
    from tasks.actors import actor_pool
    from tasks.shards import run_shard

    if not shards:
        return [], [], []
    storage.sweep_temp(catalog.temp_dir(out))  # leftovers of a killed earlier run
    catalog.sweep_leases(out)
    key = f"{label}-{run_id}"
    progress.start(key, sum(len(s.items) for s in shards), label, show_progress)
    try:
        with actor_pool(actor_cls, cfg, workers=workers, gpus_per_worker=gpus_per_worker, resources=resources,
                        address=address) as pool:
            submit = lambda sh: run_shard.submit(sh.to_dict(), out, run_id, cfg_hash, pool,  # noqa: E731
                                                 per_call, schemas, key)
            results, failures = run_bounded(shards, submit, max_inflight or pool.spec.workers + 1)
            return results, failures, pool.placement
    finally:
        progress.close(key)


# shards failing one after another mean an outage (store unreachable, every worker failing), not bad
# inputs: stop starting new ones, so the run ends with one clear error instead of failing every shard
STOP_AFTER_FAILURES = 3


def run_bounded(shards: list, submit, limit: int) -> tuple[list[dict], list[dict]]:
    """Submit shard tasks keeping at most `limit` in flight (a crash then loses little work).

    Returns (results of finished shards, [{"error": ...}] of failed ones); one failure never stops
    the others."""
    results, failures, inflight = [], [], []
    streak = [0]  # shards failed in a row

    def collect(futures):
        for fut in futures:
            try:
                results.append(fut.result())
                streak[0] = 0
            except Exception as e:  # noqa: BLE001 - shards are independent
                failures.append({"error": storage.redact(f"{e.__class__.__name__}: {e}")})
                streak[0] += 1

    for started, shard in enumerate(shards):
        if streak[0] >= STOP_AFTER_FAILURES:  # the store or the workers are down: stop, the next run resumes
            failures.append({"error": f"stopped after {streak[0]} shards failed in a row, "
                                      f"{len(shards) - started} shards not started", "stopped": True})
            break
        if len(inflight) >= limit:
            first = next(as_completed(inflight))
            collect([first])
            inflight = [f for f in inflight if f is not first]
        inflight.append(submit(shard))
    collect(wait(inflight).done)
    return results, failures


# ---- secrets -------------------------------------------------------------------------------------

_REDACTING = False


def install_redaction() -> None:
    """Redact credential values (see rasr.storage.redact) from every log record, whoever logs it.

    A record factory rather than handler filters: it also covers handlers added later (Prefect's API
    log handler, Ray's), so a secret never reaches a terminal, a log file or Prefect's database."""
    global _REDACTING
    if _REDACTING:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logger's problem, not ours
            return record
        clean = storage.redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return record

    logging.setLogRecordFactory(factory)
    _REDACTING = True


def load_secrets() -> None:
    """S3 credentials from a Prefect Secret block when the environment has none.

    RASR_S3_SECRET_BLOCK names a Secret block holding JSON {"aws_access_key_id", "aws_secret_access_key",
    and optionally "endpoint_url", "region"}; its values go to this process's environment (which Ray
    workers started afterwards inherit), never to a file."""
    block = os.environ.get("RASR_S3_SECRET_BLOCK")
    if not block or os.environ.get("AWS_ACCESS_KEY_ID"):
        return
    from prefect.blocks.system import Secret

    value = Secret.load(block).get()
    data = json.loads(value) if isinstance(value, str) else dict(value)
    mapping = {"aws_access_key_id": "AWS_ACCESS_KEY_ID", "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
               "aws_session_token": "AWS_SESSION_TOKEN", "endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_REGION"}
    missing = [k for k in ("aws_access_key_id", "aws_secret_access_key") if not data.get(k)]
    if missing:
        raise ValueError(f"Secret block {block!r} lacks {', '.join(missing)}: store JSON with "
                         f"aws_access_key_id and aws_secret_access_key (and endpoint_url for MinIO)")
    for key, env in mapping.items():
        if data.get(key):
            os.environ[env] = str(data[key])


def flow_setup() -> None:
    """First thing every flow does: credentials in place, and kept out of the logs."""
    load_secrets()
    install_redaction()
