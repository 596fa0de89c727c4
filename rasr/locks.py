"""A single-writer lock per gallery table, so two re-index runs never write one table at once.

Local DBs: an exclusive `fcntl` lock on <db>/.locks/<table>.lock (released by the OS if the holder
dies). s3:// DBs: a lease object <db>/.locks/<table>.json created with a conditional PUT
(If-None-Match: *) and renewed while held; a lease older than its TTL is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid

from rasr import storage


class LockTimeout(TimeoutError):
    pass


@contextlib.contextmanager
def gallery_lock(db: str, table: str, timeout: float = 3600.0, ttl: float = 120.0):
    """Hold the writer lock of `table` in `db` for the duration of the block (waits for others)."""
    if db.startswith("s3://"):
        with _s3_lease(db, table, timeout, ttl):
            yield
        return
    import fcntl

    folder = os.path.join(os.path.abspath(db), ".locks")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{table}.lock")
    with open(path, "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockTimeout(f"gallery table {table} in {db} is being written by another run "
                                      f"(lock {path}); waited {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "since": time.time()}))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _s3_client():
    import boto3

    kwargs = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    return boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"), **kwargs)


@contextlib.contextmanager
def _s3_lease(db: str, table: str, timeout: float, ttl: float):
    bucket, _, prefix = db[len("s3://"):].partition("/")
    key = "/".join(p for p in (prefix.strip("/"), ".locks", f"{table}.json") if p)
    client = _s3_client()
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + timeout

    def body() -> bytes:
        return json.dumps({"owner": owner, "expires": time.time() + ttl}).encode()

    while True:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body(), IfNoneMatch="*")
            break
        except client.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code not in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise
            try:
                held = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                if held.get("expires", 0) < time.time():  # abandoned lease: take it over
                    client.delete_object(Bucket=bucket, Key=key)
                    continue
            except client.exceptions.NoSuchKey:
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"gallery table {table} in {storage.redact(db)} is being written by another run; "
                                  f"waited {timeout:.0f} s") from None
            time.sleep(0.5)
    stop = threading.Event()

    def renew():
        while not stop.wait(ttl / 3):
            client.put_object(Bucket=bucket, Key=key, Body=body())

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        client.delete_object(Bucket=bucket, Key=key)
