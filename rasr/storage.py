"""Object storage through fsspec: local paths and s3:// URIs behave the same.

Credentials are never taken as arguments and never written anywhere: they come from the standard
AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION) or an
instance role, exactly as boto and Lance resolve them. `redact()` scrubs them from any text we log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import socket
import uuid

import fsspec

from rasr import faults

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "PREFECT_API_KEY")


def is_remote(uri: str) -> bool:
    """True for URIs with a non-local protocol (s3://, gs://, memory://...)."""
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint() -> str | None:
    """The S3 endpoint the AWS environment names (MinIO, a proxy...), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_client_kwargs() -> dict:
    """boto3 client keyword arguments for the endpoint (none for AWS itself)."""
    endpoint = s3_endpoint()
    return {"endpoint_url": endpoint} if endpoint else {}


def s3_retry_config() -> dict:
    """Bounded retries with jittered exponential backoff for every S3 call (botocore "standard" mode:
    throttling, 500/503, dropped connections), and timeouts so a store that went away is reported in
    seconds, not hung on. RASR_S3_ATTEMPTS (default 6) sets the attempts per call."""
    return {"retries": {"max_attempts": int(os.environ.get("RASR_S3_ATTEMPTS", 6)), "mode": "standard"},
            "connect_timeout": 10, "read_timeout": 60}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path inside it) for a local path or URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        path = uri.split("://", 1)[1]
        # one cached instance per endpoint; s3fs reads credentials from the environment itself
        fs = s3fs.S3FileSystem(client_kwargs=s3_client_kwargs(), use_listings_cache=False,
                               config_kwargs=s3_retry_config())
        return fs, path
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def normalise(uri: str) -> str:
    """One spelling per location: a local path resolved to its real absolute path, an object-store
    URI without repeated or trailing slashes (refs.lance, ./refs.lance and /abs/refs.lance agree)."""
    if is_remote(uri):
        scheme, path = uri.split("://", 1)
        return f"{scheme}://" + re.sub(r"/+", "/", path).strip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return os.path.realpath(uri)


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', keeping the scheme of `base`."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *[p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def protocol_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if is_remote(uri) else ""


# Errors that belong to one file (it is missing, forbidden, named badly): recorded on that file's row.
# Anything else (the store unreachable, timeouts after every retry) fails the batch, so its shard is
# not marked done and the next run tries again, instead of recording a passing outage as a verdict.
_ERRNO_OF_ONE_FILE = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG,
                      errno.ELOOP, errno.EINVAL}


def is_about_the_file(e: BaseException) -> bool:
    """True when a storage error is about this one file rather than the store being unavailable."""
    return isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) or \
        (isinstance(e, OSError) and e.errno in _ERRNO_OF_ONE_FILE)


def read_bytes(uri: str) -> bytes:
    """The whole object: one GET on a store (opening it as a file, or s3fs's concurrent read, asks for its size
    first: a HEAD per read)."""
    fs, path = filesystem(uri)
    if getattr(fs, "max_concurrency", None) is not None:  # s3fs
        return fs.cat_file(path, max_concurrency=1)
    return fs.cat_file(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


TEMP_PREFIX = ".rasr-tmp-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: str, tmp_dir: str | None = None) -> str:
    """A temporary name for a local write of `path`, in `tmp_dir` (same filesystem) or next to it.

    Its length does not depend on the final name's (a legal 255-byte name still has a legal
    temporary name); it names its host and process, so `sweep_temp` can tell a live write from the
    leftover of a killed one."""
    folder = tmp_dir or os.path.dirname(path)
    return os.path.join(folder, f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


def stale_temp_files(folder: str, max_age_s: float = 3600.0) -> list[str]:
    """Temporary files in `folder` left by killed writers: those of processes of this host that no
    longer exist, and any older than `max_age_s` (a writer elsewhere that died)."""
    import time

    found = []
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        path = os.path.join(folder, name)
        host, _, rest = name[len(TEMP_PREFIX):].partition("-")
        pid = rest.partition("-")[0]
        try:
            dead = host == _HOST and pid.isdigit() and not process_alive(int(pid))
            if dead or time.time() - os.lstat(path).st_mtime > max_age_s:
                found.append(path)
        except OSError:
            continue  # removed by its writer meanwhile
    return sorted(found)


def sweep_temp(folder: str | None) -> int:
    """Remove `stale_temp_files(folder)`; returns how many."""
    removed = 0
    for path in stale_temp_files(folder) if folder else []:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    """True if process `pid` of this host exists (signal 0 probes without touching it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_bytes(uri: str, data: bytes, tmp_dir: str | None = None) -> None:
    """Write a whole object. Local writes go to a temporary file first (in `tmp_dir`, else next to
    the target) and are renamed into place, so a crash never leaves a half-written file under the
    final name; S3 PUTs are atomic already."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if tmp_dir:
        os.makedirs(tmp_dir, exist_ok=True)
    tmp = temp_path(path, tmp_dir)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        faults.point("temp-written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(uri: str, obj, tmp_dir: str | None = None) -> None:
    write_bytes(uri, json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), tmp_dir)


def write_parquet(uri: str, table_or_rows, schema=None, tmp_dir: str | None = None,
                  compression: str = "snappy", row_group_size: int | None = None) -> None:
    """Write a pyarrow Table, or a list of row dicts (typed by `schema`), as one Parquet object,
    atomically through write_bytes. `compression` defaults to pyarrow's own (snappy), `row_group_size` too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = table_or_rows if isinstance(table_or_rows, pa.Table) else pa.Table.from_pylist(table_or_rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, row_group_size=row_group_size)
    write_bytes(uri, buf.getvalue(), tmp_dir)


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def safe_relpath(rel: str) -> str:
    """A relative path that can never escape the folder it is joined to."""
    parts = []
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            part = "__"
        parts.append(part.replace("\x00", "_"))
    if not parts:
        raise ValueError(f"empty relative path from {rel!r}")
    return "/".join(parts)


def lance_storage_options(uri: str) -> dict | None:
    """storage_options for LanceDB on s3://, built from the AWS environment (None for local)."""
    if not uri.startswith("s3://"):
        return None
    opts: dict = {}
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID"):
        opts["aws_access_key_id"] = env["AWS_ACCESS_KEY_ID"]
    if env.get("AWS_SECRET_ACCESS_KEY"):
        opts["aws_secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
    if env.get("AWS_SESSION_TOKEN"):
        opts["aws_session_token"] = env["AWS_SESSION_TOKEN"]
    endpoint = s3_endpoint()
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    opts["aws_region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    return opts


def redact(text: str) -> str:
    """Remove credential values found in the environment from a message."""
    text = str(text)
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    # credentials embedded in URIs: scheme://user:secret@host
    return re.sub(r"(://[^/:@\s]+):[^@/\s]+@", r"\1:***@", text)
