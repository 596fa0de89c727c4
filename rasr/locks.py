"""A single-writer lock per gallery table, so two re-index runs never write one table at once.

Local DBs: an exclusive `fcntl` lock on <db>/.locks/<table>.lock (released by the OS if the holder
dies). s3:// DBs: a `Lease` object <db>/.locks/<table>.json created with a conditional PUT
(If-None-Match: *) and renewed while held; an expired lease is taken over with a conditional PUT
(If-Match: the ETag read), so two waiters never both get it. The same `Lease` claims enhance shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
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
    from botocore.config import Config

    return boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"),
                        config=Config(**storage.s3_retry_config()), **storage.s3_client_kwargs())


class Lease:
    """A lease object at `uri` (local path or s3://): at most one holder at a time.

    Taken only if absent (O_EXCL locally; a PUT with If-None-Match: * on S3), taken over only when
    abandoned (past its expiry, or its holder's process is gone on this host) with a compare-and-swap
    (a PUT with If-Match: <the ETag read> on S3; a content check under a short flock locally), so of
    two runs that race for one lease exactly one gets it. Renewed while held (`keep_renewed`)."""

    def __init__(self, uri: str, ttl: float = 600.0, run_id: str = ""):
        self.uri, self.ttl, self.run_id = uri, ttl, run_id
        self.owner = uuid.uuid4().hex
        self._tag: str | None = None   # ETag (S3) or content hash (local) of our lease object
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        if uri.startswith("s3://"):
            self._bucket, _, self._key = uri[len("s3://"):].partition("/")
            self._client = _s3_client()

    # ---- what a holder writes ----------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "run_id": self.run_id, "host": socket.gethostname(),
                           "pid": os.getpid(), "expires": time.time() + self.ttl}).encode()

    @staticmethod
    def abandoned(holder: dict) -> bool:
        """Past its expiry, or held by a process of this host that no longer exists."""
        if holder.get("expires", 0) < time.time():
            return True
        return holder.get("host") == socket.gethostname() and bool(holder.get("pid")) and \
            not storage.process_alive(int(holder["pid"]))

    # ---- the operations ----------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take the lease if it is free or abandoned; False if another live holder has it."""
        if self._create():
            return True
        found = self._read()
        if found is None:  # released between our create and our read: try once more
            return self._create()
        holder, tag = found
        if holder.get("owner") == self.owner:  # our create went through but its answer was lost (retried)
            self._tag = tag
            return True
        return self.abandoned(holder) and self._swap(tag)

    def holder(self) -> dict | None:
        found = self._read()
        return found[0] if found else None

    def renew(self) -> bool:
        """Push the expiry forward; False if the lease was lost (taken over after expiring)."""
        return self._tag is not None and self._swap(self._tag)

    def keep_renewed(self) -> "Lease":
        def loop():
            while not self._stop.wait(self.ttl / 4):
                if not self.renew():
                    return
        self._renewer = threading.Thread(target=loop, daemon=True, name="rasr-lease")
        self._renewer.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self._tag is not None:
            self._delete(self._tag)
            self._tag = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ---- local files ---------------------------------------------------------------------------------
    def _create(self) -> bool:
        body = self._body()
        if self._bucket_mode:
            try:
                self._tag = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfNoneMatch="*")["ETag"]
                return True
            except self._client.exceptions.ClientError as e:
                if _precondition_failed(e):
                    return False
                raise
        os.makedirs(os.path.dirname(self.uri), exist_ok=True)
        try:
            fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        self._tag = hashlib.sha256(body).hexdigest()
        return True

    def _read(self) -> tuple[dict, str] | None:
        if self._bucket_mode:
            try:
                r = self._client.get_object(Bucket=self._bucket, Key=self._key)
            except self._client.exceptions.NoSuchKey:
                return None
            return _parse(r["Body"].read()), r["ETag"]
        try:
            data = open(self.uri, "rb").read()
        except FileNotFoundError:
            return None
        return _parse(data), hashlib.sha256(data).hexdigest()

    def _swap(self, tag: str) -> bool:
        """Replace the lease object if it is still the one with `tag` (compare-and-swap)."""
        body = self._body()
        if self._bucket_mode:
            try:
                self._tag = self._client.put_object(Bucket=self._bucket, Key=self._key, Body=body, IfMatch=tag)["ETag"]
                return True
            except self._client.exceptions.ClientError as e:
                if _precondition_failed(e) or e.response.get("Error", {}).get("Code") == "NoSuchKey":
                    return False
                raise
        with _local_guard(self.uri):
            found = self._read()
            if found is None or found[1] != tag:
                return False
            tmp = storage.temp_path(self.uri)
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, self.uri)
        self._tag = hashlib.sha256(body).hexdigest()
        return True

    def _delete(self, tag: str) -> None:
        if self._bucket_mode:
            try:
                self._client.delete_object(Bucket=self._bucket, Key=self._key, IfMatch=tag)
            except self._client.exceptions.ClientError as e:
                if not _precondition_failed(e):
                    raise
            return
        with _local_guard(self.uri):
            found = self._read()
            if found is not None and found[1] == tag:  # never delete a lease another run took over
                os.unlink(self.uri)

    @property
    def _bucket_mode(self) -> bool:
        return self.uri.startswith("s3://")


def create_once(uri: str, body: bytes) -> bool:
    """Write `body` at `uri` only if nothing is there yet; True when this call created it. Atomic where the
    store allows it: locally a complete temporary file hard-linked into place (never a half-written file
    under the name), on s3:// a PUT with If-None-Match: *; elsewhere an existence check then a write."""
    if uri.startswith("s3://"):
        client = _s3_client()
        bucket, _, key = uri[len("s3://"):].partition("/")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            return True
        except client.exceptions.ClientError as e:
            if _precondition_failed(e):
                return False
            raise
    if storage.is_remote(uri):
        if storage.exists(uri):
            return False
        storage.write_bytes(uri, body)
        return True
    os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    tmp = storage.temp_path(uri)
    with open(tmp, "wb") as f:
        f.write(body)
    try:
        os.link(tmp, uri)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _parse(data: bytes) -> dict:
    try:
        value = json.loads(data)
        return value if isinstance(value, dict) else {}
    except ValueError:  # a torn or foreign file: treat as expired
        return {}


def _precondition_failed(e) -> bool:
    code = e.response.get("Error", {}).get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or status in (409, 412)


@contextlib.contextmanager
def _local_guard(path: str):
    """A short exclusive flock around a local lease's compare-and-swap."""
    import fcntl

    with open(os.path.join(os.path.dirname(path), ".guard"), "a+") as g:
        fcntl.flock(g, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(g, fcntl.LOCK_UN)


@contextlib.contextmanager
def _s3_lease(db: str, table: str, timeout: float, ttl: float):
    lease = Lease(storage.join(db.rstrip("/"), ".locks", f"{table}.json"), ttl=ttl)
    deadline = time.monotonic() + timeout
    while not lease.acquire():
        if time.monotonic() > deadline:
            raise LockTimeout(f"gallery table {table} in {storage.redact(db)} is being written by another run; "
                              f"waited {timeout:.0f} s") from None
        time.sleep(0.5)
    with lease.keep_renewed():
        yield
