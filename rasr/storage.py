"""Object storage through fsspec: local paths and s3:// URIs behave the same.

Credentials are never taken as arguments and never written anywhere: they come from the standard
AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION) or an
instance role, exactly as boto and Lance resolve them. `redact()` scrubs them from any text we log.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Iterator

import fsspec

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "PREFECT_API_KEY")


def is_remote(uri: str) -> bool:
    """True for URIs with a non-local protocol (s3://, gs://, memory://...)."""
    return "://" in uri and not uri.startswith("file://")


def _s3_client_kwargs() -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    return kwargs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path inside it) for a local path or URI."""
    if uri.startswith("s3://") or uri.startswith("s3a://"):
        import s3fs

        path = uri.split("://", 1)[1]
        # one cached instance per endpoint; s3fs reads credentials from the environment itself
        fs = s3fs.S3FileSystem(client_kwargs=_s3_client_kwargs(), use_listings_cache=False)
        return fs, path
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', keeping the scheme of `base`."""
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *[p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def protocol_prefix(uri: str) -> str:
    return uri.split("://", 1)[0] + "://" if is_remote(uri) else ""


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object. Local writes go to a temporary name first so a crash never leaves a
    half-written file under the final name; S3 PUTs are atomic already."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@dataclass(frozen=True)
class FileEntry:
    uri: str        # full URI (or absolute local path)
    relpath: str    # path relative to the listed root, '/'-separated
    size: int
    mtime: str      # modification time or ETag: anything that changes when the bytes change


def _stamp(info: dict) -> str:
    """Modification time as epoch seconds (text), comparable across local files and object stores."""
    import datetime as dt

    for key in ("mtime", "LastModified", "last_modified", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            return f"{value.timestamp():.6f}"
        try:
            return f"{float(value):.6f}"
        except (TypeError, ValueError):
            try:
                return f"{dt.datetime.fromisoformat(str(value)).timestamp():.6f}"
            except ValueError:
                return str(value)
    return str(info.get("ETag") or info.get("etag") or "")


def mtime_seconds(stamp: str) -> float | None:
    """The epoch seconds of a FileEntry.mtime, or None when the store gave none."""
    try:
        return float(stamp)
    except (TypeError, ValueError):
        return None


def list_files(root: str) -> Iterator[FileEntry]:
    """Recursively list every file under a folder or prefix, sorted by relative path."""
    fs, base = filesystem(root)
    if not fs.exists(base):
        raise FileNotFoundError(f"input {redact(root)} does not exist: check the path or prefix")
    if fs.isfile(base):
        info = fs.info(base)
        yield FileEntry(uri=root, relpath=posixpath.basename(base), size=int(info.get("size") or 0),
                        mtime=_stamp(info))
        return
    prefix = protocol_prefix(root)
    found = fs.find(base, detail=True)
    base_norm = base.rstrip("/")
    for path in sorted(found):
        info = found[path]
        if info.get("type") == "directory":
            continue
        rel = path[len(base_norm):].lstrip("/").replace(os.sep, "/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders (.DS_Store, .git, our own temp files)
        uri = prefix + path if prefix else path
        yield FileEntry(uri=uri, relpath=rel, size=int(info.get("size") or 0), mtime=_stamp(info))


def safe_relpath(rel: str) -> str:
    """A relative path that can never escape the folder it is joined to."""
    parts = []
    for part in re.split(r"[\\/]+", rel):
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
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
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
