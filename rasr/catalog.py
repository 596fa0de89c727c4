"""What to do: list the inputs, drop what finished shards already cover, cut the rest into shards.

A shard is named by a hash of the config and of its members (relative path, size, mtime), so the
same inputs with the same config always give the same shards. A shard counts as done only when its
done-marker exists; markers list their members, so a rerun skips every input a finished shard
covers and re-shards only the rest (a crashed run resumes at the first incomplete shard; a nightly
run sees only new or changed files).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from rasr import storage
from rasr.restoration.images import IMAGE_EXTENSIONS
from rasr.listing import list_files

T = TypeVar("T")

DONE_DIR = "_done"  # rasr/runstate.py: loose markers and their rollups
MANIFEST_DIR = "manifest"
IMAGES_DIR = "images"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class Item:
    """One input file."""

    uri: str
    relpath: str
    size: int
    mtime: str
    status: str = ""   # decided when listing ("skipped"/"error": hidden, dangling symlink...) ...
    reason: str = ""   # ... and why; such an item is recorded, never read

    @property
    def is_image(self) -> bool:
        return not self.status and os.path.splitext(self.relpath)[1].lower() in IMAGE_EXTENSIONS


def category_of(relpath: str) -> str:
    """An input's category: its first folder under the listed root (`animals/cat1.jpg` -> animals), "" at the top."""
    parts = relpath.split("/")
    return parts[0] if len(parts) > 1 else ""


@dataclass
class Shard:
    id: str
    items: list[Item] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "items": [asdict(i) for i in self.items]}

    @classmethod
    def from_dict(cls, d: dict) -> "Shard":
        return cls(id=d["id"], items=[Item(**i) for i in d["items"]])


def config_hash(config: dict) -> str:
    """Stable short hash of everything that changes the outputs."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def list_inputs(root: str, follow_symlinks: bool = False) -> list[Item]:
    """Every file under a local folder or s3:// prefix, sorted by relative path (hidden files,
    broken symlinks and the like included, with the status and reason they will be recorded with)."""
    return [Item(e.uri, e.relpath, e.size, e.mtime, e.status, e.reason)
            for e in list_files(root, follow_symlinks)]


def read_input_list(root: str, list_uri: str, threads: int = 16) -> list[Item]:
    """The inputs a list names instead of a listing of `root` (a night told what is new by the store's event log
    or inventory): a text file of keys, one per line (paths relative to `root`, or URIs under it; blank lines and
    # comments ignored), or an S3 Inventory `manifest.json` (CSV; its Size and LastModifiedDate are used, no
    request per key). A plain list is stat'ed key by key (concurrently); a key that is not there is an error row."""
    import posixpath

    from rasr.listing import FileEntry, _hidden, _stamp

    fs, base = storage.filesystem(root)
    prefix = storage.protocol_prefix(root)
    base = base.rstrip("/")

    def relpath_of(key: str) -> str | None:
        key = key.strip()
        if "://" in key:
            key = key.split("://", 1)[1]
        if key.startswith(base + "/"):
            key = key[len(base) + 1:]
        rel = posixpath.normpath(key.lstrip("/"))
        return None if rel.startswith("..") or rel in ("", ".") else rel

    def entry(rel: str, size: int, mtime: str) -> Item:
        e = FileEntry(prefix + base + "/" + rel, rel, size, mtime)
        if any(part.startswith(".") for part in rel.split("/")):
            e = _hidden(e)
        return Item(e.uri, e.relpath, e.size, e.mtime, e.status, e.reason)

    data = storage.read_bytes(list_uri)
    if list_uri.rstrip("/").endswith("manifest.json"):  # the whole bucket: only what is under INPUT
        found = {}
        for path, size, modified in _inventory_rows(list_uri, json.loads(data)):
            if path.startswith(base + "/") and (rel := relpath_of(path)) is not None:
                found[rel] = entry(rel, size, _stamp({"LastModified": modified}))
        return sorted(found.values(), key=lambda i: i.relpath)
    keys = [ln.strip() for ln in data.decode("utf-8-sig").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    bad = [k for k in keys if relpath_of(k) is None]
    if bad:
        raise ValueError(f"--input-list {storage.redact(list_uri)}: {bad[0]!r} is not under {storage.redact(root)}")
    rels = sorted(set(map(relpath_of, keys)))

    def stat(rel: str) -> Item:
        try:
            info = fs.info(base + "/" + rel)
        except FileNotFoundError:
            return Item(prefix + base + "/" + rel, rel, 0, "", "error",
                        f"listed in --input-list {storage.redact(list_uri)} but not found under INPUT")
        return entry(rel, int(info.get("size") or 0), _stamp(info))

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(stat, rels))


def _inventory_file(manifest_uri: str, bucket: str, key: str) -> str:
    """Where an inventory data file is: in its destination bucket; for a local copy of the report, beside the
    manifest or in the report's data/ folder (<config>/<date>/manifest.json, <config>/data/<file>)."""
    if manifest_uri.startswith("s3://"):
        return f"s3://{bucket}/{key}"
    here = os.path.dirname(manifest_uri)
    name = key.rsplit("/", 1)[-1]
    for candidate in (os.path.join(here, name), os.path.join(os.path.dirname(here), "data", name)):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"inventory data file {name} is neither beside {manifest_uri} nor in ../data/")


def _inventory_rows(manifest_uri: str, manifest: dict):
    """(bucket/key, size, last modified) of every object an S3 Inventory report (CSV format) lists."""
    import csv
    import gzip
    import urllib.parse

    if manifest.get("fileFormat", "CSV").upper() != "CSV":
        raise ValueError(f"{storage.redact(manifest_uri)}: only CSV inventory reports are read "
                         f"(this one is {manifest.get('fileFormat')}); choose CSV in the inventory configuration")
    cols = [c.strip() for c in manifest["fileSchema"].split(",")]
    if "Key" not in cols:
        raise ValueError(f"{storage.redact(manifest_uri)}: the inventory has no Key column")
    dest = manifest.get("destinationBucket", "").rsplit(":", 1)[-1]
    bucket = dest or manifest_uri.split("://", 1)[1].split("/", 1)[0]
    for f in manifest.get("files", []):
        raw = storage.read_bytes(_inventory_file(manifest_uri, bucket, f["key"]))
        text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
        for row in csv.reader(io.StringIO(text)):
            rec = dict(zip(cols, row))
            if rec.get("IsDeleteMarker", "false").lower() == "true" or rec.get("IsLatest", "true").lower() == "false":
                continue
            key = urllib.parse.unquote_plus(rec["Key"])
            yield f"{rec.get('Bucket') or manifest.get('sourceBucket')}/{key}", int(rec.get("Size") or 0), \
                rec.get("LastModifiedDate", "")


ITEM_FIELDS = ("uri", "relpath", "size", "mtime", "status", "reason")


def shard_id(cfg_hash: str, items: list[Item]) -> str:
    h = hashlib.sha256(cfg_hash.encode())
    for it in items:
        h.update(f"\0{it.relpath}\0{it.size}\0{it.mtime}".encode())
    return h.hexdigest()[:16]


def done_markers(out: str, config_hash: str | None = None, relpaths: set[str] | None = None) -> list[dict]:
    """Every finished shard's marker under <out>/_done, loose or rolled up (rasr/runstate.py); only those of
    `config_hash` and the items in `relpaths` when given."""
    from rasr import runstate

    return runstate.read(out, config_hash, relpaths)


def covered(markers: list[dict], cfg_hash: str, retry_failed: bool = False) -> dict[str, list[dict]]:
    """relpath -> [{size, mtime, sha256}] of the versions of each input finished under this config.

    An input that failed for a reason that can pass (marked `retry`: storage, permissions, memory) is not
    finished: the next run tries it again; with `retry_failed`, no failed input is. Every marker counts
    (an input edited since keeps its older versions' entries, which no longer match it)."""
    done: dict[str, list[dict]] = {}
    for m in markers:
        if m.get("config_hash") != cfg_hash:
            continue
        for it in m.get("items", []):
            if it.get("status") == "error" and (it.get("retry") or retry_failed):
                continue
            done.setdefault(it["relpath"], []).append(
                {"size": int(it["size"]), "mtime": str(it["mtime"]), "sha256": it.get("sha256")})
    return done


def is_done(item: Item, versions: list[dict] | tuple = ()) -> bool:
    """The input as listed now (size and mtime) is one of the finished versions."""
    return any(v["size"] == item.size and v["mtime"] == item.mtime for v in versions)


def same_bytes(items: list[Item], done: dict[str, list[dict]], threads: int = 8) -> dict[str, list[dict]]:
    """`done` plus the inputs whose mtime changed but whose bytes did not (replaced by an identical copy):
    their sha256 decides, read only for inputs of a finished version's size."""
    suspects = [(it, {v["sha256"] for v in done.get(it.relpath, ()) if v["size"] == it.size and v.get("sha256")})
                for it in items if not it.status and not is_done(it, done.get(it.relpath, ()))]
    suspects = [(it, shas) for it, shas in suspects if shas]
    if not suspects:
        return done

    def unchanged(pair) -> bool:
        it, shas = pair
        try:
            return hashlib.sha256(storage.read_bytes(it.uri)).hexdigest() in shas
        except Exception:  # noqa: BLE001 - unreadable now: the run itself records why
            return False

    with ThreadPoolExecutor(threads) as pool:
        same = list(pool.map(unchanged, suspects))
    out = dict(done)
    for (it, _), ok in zip(suspects, same):
        if ok:
            out[it.relpath] = [*out[it.relpath], {"size": it.size, "mtime": it.mtime, "sha256": None}]
    return out


def plan(items: list[Item], done: dict[str, list[dict]], cfg_hash: str, shard_size: int) -> list[Shard]:
    """Shards of at most `shard_size` inputs for everything not already done (unchanged)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    todo = [it for it in items if not is_done(it, done.get(it.relpath, ()))]
    return [Shard(id=shard_id(cfg_hash, chunk), items=chunk) for chunk in chunks(todo, shard_size)]


def chunks(seq: Sequence[T], size: int) -> list[Sequence[T]]:
    """`seq` cut into consecutive pieces of `size` (the last may be shorter): shards, actor calls, batches."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def done_marker_uri(out: str, sid: str) -> str:
    return storage.join(out, DONE_DIR, f"shard={sid}.json")


TMP_DIR = ".tmp"
LEASE_DIR = "_leases"


def temp_dir(out: str) -> str | None:
    """Where local writes under <out> stage their temporary files (one folder: a killed writer's
    leftovers are found without walking the outputs); None on object stores (PUTs are atomic)."""
    return None if storage.is_remote(out) else os.path.join(os.path.abspath(out), TMP_DIR)
LEASE_TTL = float(os.environ.get("RASR_LEASE_TTL", 600))  # seconds; renewed every quarter of it while held


def shard_lease(out: str, sid: str, run_id: str):
    """The lease that claims shard `sid` of `out` for one run (None on stores without conditional
    writes: only local folders and s3:// have them)."""
    from rasr.locks import Lease

    if storage.is_remote(out) and not out.startswith("s3://"):
        return None
    return Lease(storage.join(out, LEASE_DIR, f"shard={sid}.json"), ttl=LEASE_TTL, run_id=run_id)


def sweep_leases(out: str) -> int:
    """Remove leases left by runs that died (their process is gone on this host, or they expired):
    a run killed after its shard's done-marker but before releasing the lease leaves one behind."""
    fs, base = storage.filesystem(storage.join(out, LEASE_DIR))
    if (storage.is_remote(out) and not out.startswith("s3://")) or not fs.exists(base):
        return 0
    removed = 0
    for path in fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not (name.startswith("shard=") and name.endswith(".json")):
            continue
        lease = shard_lease(out, name[len("shard="):-len(".json")], "sweep")
        if lease.acquire():  # only an abandoned lease can be taken; a live run keeps its own
            lease.release()
            removed += 1
    return removed


NAME_MAX = 255  # bytes per path component on ext4, XFS, APFS, NTFS...


def output_uri(out: str, relpath: str, fmt: str) -> str:
    """<out>/images/<relative path of the input>.<fmt> (absolute): mirrors the input tree, never escapes
    <out>, and no two inputs ever share an output, on any store:

    - the format's extension is always appended (a.jpg -> a.jpg.png, a.jpg.png -> a.jpg.png.png);
    - a path that is not all lower case NFC without '~' gets '~' + 16 hex digits of its own hash
      (IMG_1.JPG -> IMG_1.JPG~<hash>.png), so names that differ only in case or Unicode form stay
      apart on case-insensitive stores (macOS, Windows shares);
    - a name longer than 255 bytes is shortened and gets the hash too."""
    rel = storage.safe_relpath(relpath)
    folders, name = rel.split("/")[:-1], rel.split("/")[-1]
    tag = "~" + hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    canonical = "~" not in rel and unicodedata.normalize("NFC", rel).casefold() == rel
    final = f"{name}.{fmt}" if canonical else f"{name}{tag}.{fmt}"
    if len(final.encode("utf-8", "surrogateescape")) > NAME_MAX:
        final = _shorten(name, f"{tag}.{fmt}")
    folders = [f if len(f.encode("utf-8", "surrogateescape")) <= NAME_MAX else
               _shorten(f, "~" + hashlib.sha256(f.encode("utf-8", "surrogateescape")).hexdigest()[:16])
               for f in folders]
    if not storage.is_remote(out):
        out = os.path.abspath(out)
    return storage.join(out, IMAGES_DIR, *folders, final)


def _shorten(name: str, suffix: str) -> str:
    """`name` cut (at a character boundary) so that name + suffix fits in NAME_MAX bytes."""
    budget = NAME_MAX - len(suffix.encode("utf-8", "surrogateescape"))
    head = name.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")
    return head + suffix
