"""Listing a folder or an object-store prefix: every file, each with a status and a reason when it
cannot be processed (hidden, dangling symlink, symlink loop, special file...). Nothing is left out
silently; local walks never follow a symlink out of the tree unless asked, and never loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
from dataclasses import dataclass
from typing import Iterator

from rasr.storage import filesystem, is_remote, protocol_prefix, redact


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
