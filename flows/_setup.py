"""Set-up of a flow, explicit and never on import: `flow` makes flows whose call turns telemetry off
before Prefect starts (a script calling a flow gets no usage report from Prefect's ephemeral server),
and `flow_setup()`, the first line of every flow, puts S3 credentials in place, keeps secrets out of
every log record and checks the flow's configs."""

from __future__ import annotations

import json
import logging
import os

import prefect

from rasr import options, storage
from tasks.runtime import quiet_environment


class Flow(prefect.Flow):
    """A Prefect flow that turns telemetry off when it is called, before Prefect creates the run (and,
    without PREFECT_API_URL, starts its ephemeral server, which reads these settings once)."""

    def __call__(self, *args, **kwargs):
        quiet_environment()
        return super().__call__(*args, **kwargs)


def flow(**kwargs):
    """`@flow(name=...)` as Prefect's, making a `Flow` (above)."""
    return lambda fn: Flow(fn, **kwargs)

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


def flow_setup(*configs) -> None:
    """First thing every flow does: telemetry off, credentials in place and kept out of the logs, and
    its configs checked (choices and bounds, named by option: a deployment's parameters are not
    checked by the command line)."""
    quiet_environment()
    for cfg in configs:
        if cfg is not None:
            options.check(cfg)
    load_secrets()
    install_redaction()
