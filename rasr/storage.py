"""Object storage through fsspec: local paths and s3:// URIs behave the same.

Credentials are never taken as arguments and never written anywhere: they come from the standard
AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION) or an
instance role, exactly as boto and Lance resolve them. `redact()` scrubs them from any text we log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Iterator

import fsspec

from rasr import faults

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
        fs = s3fs.S3FileSystem(client_kwargs=_s3_client_kwargs(), use_listings_cache=False,
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
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


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
    status: str = ""   # set when the entry cannot be processed: "skipped" or "error" ...
    reason: str = ""   # ... and why (hidden, dangling symlink, symlink loop, not a regular file...)


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


def list_files(root: str, follow_symlinks: bool = False) -> Iterator[FileEntry]:
    """Recursively list every file under a folder or prefix, sorted by relative path.

    Nothing is left out silently: entries that cannot be processed come with a status and a reason.
    Hidden files (leading dot) are "skipped"; a hidden folder is one skipped entry. Locally, a symlink
    is followed only to a file inside the tree (or anywhere with follow_symlinks); a dangling symlink
    or a symlink loop is an "error" entry; other symlinks and special files are "skipped"."""
    fs, base = filesystem(root)
    if not fs.exists(base) and not os.path.islink(base):
        raise FileNotFoundError(f"input {redact(root)} does not exist: check the path or prefix")
    if fs.isfile(base):
        info = fs.info(base)
        yield FileEntry(uri=root, relpath=posixpath.basename(base), size=int(info.get("size") or 0),
                        mtime=_stamp(info))
        return
    if not is_remote(root):
        yield from sorted(_list_local(base, follow_symlinks), key=lambda e: e.relpath)
        return
    prefix = protocol_prefix(root)
    found = fs.find(base, detail=True)
    base_norm = base.rstrip("/")
    hidden_dirs: dict[str, list] = {}
    entries = []
    for path in sorted(found):
        info = found[path]
        if info.get("type") == "directory":
            continue
        rel = path[len(base_norm):].lstrip("/")
        uri = prefix + path
        parts = rel.split("/")
        hidden_at = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if hidden_at is not None and hidden_at < len(parts) - 1:  # inside a hidden folder
            hidden_dirs.setdefault("/".join(parts[:hidden_at + 1]), []).append(info)
            continue
        entry = FileEntry(uri=uri, relpath=rel, size=int(info.get("size") or 0), mtime=_stamp(info))
        if hidden_at is not None:
            entry = _hidden(entry)
        entries.append(entry)
    for rel, infos in hidden_dirs.items():
        entries.append(_hidden_folder(prefix + base_norm + "/" + rel, rel, len(infos),
                                      sum(int(i.get("size") or 0) for i in infos),
                                      max(_stamp(i) for i in infos)))
    yield from sorted(entries, key=lambda e: e.relpath)


HIDDEN = "hidden (its name starts with '.'): not enhanced; rename it to include it"


def _hidden(entry: FileEntry) -> FileEntry:
    return FileEntry(entry.uri, entry.relpath, entry.size, entry.mtime, "skipped", HIDDEN)


def _hidden_folder(uri: str, rel: str, files: int, size: int, mtime: str) -> FileEntry:
    return FileEntry(uri, rel, size, mtime, "skipped",
                     f"hidden folder with {files} files (its name starts with '.'): not enhanced; rename it to include it")


def _list_local(base: str, follow_symlinks: bool) -> Iterator[FileEntry]:
    """os.scandir walk that never follows a symlink out of the tree unless asked, and never loops."""
    import stat as st_

    root_real = os.path.realpath(base)
    seen_dirs = {root_real}

    def inside(real: str) -> bool:
        return real == root_real or real.startswith(root_real + os.sep)

    def entry(path: str, rel: str, st, status: str = "", reason: str = "") -> FileEntry:
        return FileEntry(path, rel, int(st.st_size), f"{st.st_mtime:.6f}", status, reason)

    def folder_totals(path: str) -> tuple[int, int, float]:
        files = size = 0
        newest = os.lstat(path).st_mtime
        for dirpath, _, names in os.walk(path):
            for n in names:
                with contextlib.suppress(OSError):
                    s = os.lstat(os.path.join(dirpath, n))
                    files, size, newest = files + 1, size + s.st_size, max(newest, s.st_mtime)
        return files, size, newest

    def walk(folder: str, prefix: str) -> Iterator[FileEntry]:
        try:
            children = list(os.scandir(folder))
        except OSError as e:
            st = os.lstat(folder)
            yield entry(folder, prefix.rstrip("/") or ".", st, "error", f"cannot list folder: {e.strerror}")
            return
        for child in children:
            path, rel = child.path, prefix + child.name
            try:
                lst = os.lstat(path)
            except OSError as e:
                yield FileEntry(path, rel, 0, "", "error", f"cannot stat: {e.strerror}")
                continue
            if child.name.startswith("."):
                if st_.S_ISDIR(lst.st_mode):
                    files, size, newest = folder_totals(path)
                    yield _hidden_folder(path, rel, files, size, f"{newest:.6f}")
                else:
                    yield _hidden(entry(path, rel, lst))
                continue
            st = lst
            if st_.S_ISLNK(lst.st_mode):
                target = os.path.realpath(path)
                try:
                    st = os.stat(path)
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        yield entry(path, rel, lst, "error", "symlink loop: it points (through other links) back to itself")
                    else:
                        yield entry(path, rel, lst, "error", f"dangling symlink: its target {target} does not exist")
                    continue
                if not inside(target) and not follow_symlinks:
                    yield entry(path, rel, lst, "skipped", f"symlink to {target}, outside the input folder: not "
                                                           f"followed (pass --follow-symlinks to include it)")
                    continue
                if st_.S_ISDIR(st.st_mode) and (inside(target) or target in seen_dirs):
                    yield entry(path, rel, lst, "skipped", f"symlink to the folder {target}, which is listed "
                                                           f"already: not followed twice")
                    continue
            if st_.S_ISDIR(st.st_mode):
                seen_dirs.add(os.path.realpath(path))
                yield from walk(path, rel + "/")
            elif st_.S_ISREG(st.st_mode):
                yield entry(path, rel, st)
            else:
                yield entry(path, rel, st, "skipped", "not a regular file (device, FIFO or socket)")

    yield from walk(base, "")


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
