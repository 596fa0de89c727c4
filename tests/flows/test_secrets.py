"""Secrets: from the environment or a Prefect Secret block, and redacted from every log."""

import json
import logging
import os

import pytest
from prefect import flow, get_run_logger

from flows._setup import flow_setup, load_secrets


@flow(name="logs-a-secret")
def leaky(url: str) -> str:
    flow_setup()
    get_run_logger().warning(f"connecting with {url}")  # WARNING: the test session logs at that level
    logging.getLogger("rasr.test").warning(f"retrying {url}")
    return "done"


def test_secret_values_are_redacted_from_logs(prefect_harness, monkeypatch, caplog, capfd):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG-example")
    assert leaky("s3://bucket?secret=wJalrXUtnFEMI-K7MDENG-example") == "done"
    out, err = capfd.readouterr()
    assert "wJalrXUtnFEMI-K7MDENG-example" not in out + err + caplog.text
    assert "retrying s3://bucket?secret=***" in caplog.text

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    async def stored_logs():
        async with get_client() as c:
            return [log.message for log in await c.read_logs(LogFilter())]

    import asyncio

    import time

    deadline = time.time() + 20  # the API log handler ships records in batches
    messages = asyncio.run(stored_logs())
    while not any("connecting with" in m for m in messages):
        assert time.time() < deadline, "the flow's log never reached the API"
        time.sleep(0.5)
        messages = asyncio.run(stored_logs())
    # the API log handler got the record ...
    assert not any("wJalrXUtnFEMI-K7MDENG-example" in m for m in messages)  # ... without the secret


def test_s3_credentials_from_a_secret_block(prefect_harness, monkeypatch):
    from prefect.blocks.system import Secret

    Secret(value=json.dumps({"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "s3cr3t-from-block",
                             "endpoint_url": "http://127.0.0.1:9000"})).save("rasr-s3-test", overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RASR_S3_SECRET_BLOCK", "rasr-s3-test")
    load_secrets()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-from-block"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    Secret(value=json.dumps({"aws_access_key_id": "x"})).save("rasr-s3-bad", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("RASR_S3_SECRET_BLOCK", "rasr-s3-bad")
    with pytest.raises(ValueError, match="aws_secret_access_key"):
        load_secrets()


def test_no_secret_files_in_the_repo():
    import re
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    assert not [f for f in files if re.search(r"(^|/)(\.env|credentials|.*\.pem|.*\.key)$", f)]
    for f in files:
        if f.endswith((".py", ".yaml", ".yml", ".md", ".json", ".toml", ".sh")):
            text = open(os.path.join(root, f), errors="ignore").read()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), f
