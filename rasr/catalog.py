"""What to do: list the inputs, drop what finished shards already cover, cut the rest into shards.

A shard is named by a hash of the config and of its members (relative path, size, mtime), so the
same inputs with the same config always give the same shards. A shard counts as done only when its
done-marker exists; markers list their members, so a rerun skips every input a finished shard
covers and re-shards only the rest (a crashed run resumes at the first incomplete shard; a nightly
run sees only new or changed files).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from rasr import storage
from rasr.images import IMAGE_EXTENSIONS

DONE_DIR = "_done"
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

    @property
    def is_image(self) -> bool:
        return os.path.splitext(self.relpath)[1].lower() in IMAGE_EXTENSIONS


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


def list_inputs(root: str) -> list[Item]:
    """Every file under a local folder or s3:// prefix, sorted by relative path."""
    return [Item(e.uri, e.relpath, e.size, e.mtime) for e in storage.list_files(root)]


def shard_id(cfg_hash: str, items: list[Item]) -> str:
    h = hashlib.sha256(cfg_hash.encode())
    for it in items:
        h.update(f"\0{it.relpath}\0{it.size}\0{it.mtime}".encode())
    return h.hexdigest()[:16]


def done_markers(out: str) -> list[dict]:
    """Contents of every done-marker under <out>/_done (read concurrently: there may be thousands)."""
    fs, base = storage.filesystem(storage.join(out, DONE_DIR))
    if not fs.exists(base):
        return []
    paths = [p for p in fs.find(base) if p.endswith(".json")]
    if not paths:
        return []
    if storage.is_remote(out):
        blobs = fs.cat(paths)  # s3fs fetches a list concurrently
        return [json.loads(blobs[p]) for p in paths]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda p: json.loads(open(p, "rb").read()), paths))


def covered(markers: list[dict], cfg_hash: str) -> dict[str, tuple[int, str]]:
    """relpath -> (size, mtime) of inputs finished under this config."""
    done: dict[str, tuple[int, str]] = {}
    for m in markers:
        if m.get("config_hash") != cfg_hash:
            continue
        for it in m.get("items", []):
            done[it["relpath"]] = (int(it["size"]), str(it["mtime"]))
    return done


def plan(items: list[Item], done: dict[str, tuple[int, str]], cfg_hash: str, shard_size: int) -> list[Shard]:
    """Shards of at most `shard_size` inputs for everything not already done (unchanged)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    todo = [it for it in items if done.get(it.relpath) != (it.size, it.mtime)]
    shards = []
    for i in range(0, len(todo), shard_size):
        chunk = todo[i:i + shard_size]
        shards.append(Shard(id=shard_id(cfg_hash, chunk), items=chunk))
    return shards


def done_marker_uri(out: str, sid: str) -> str:
    return storage.join(out, DONE_DIR, f"shard={sid}.json")


def manifest_uri(out: str, sid: str) -> str:
    return storage.join(out, MANIFEST_DIR, f"shard={sid}", "part-0.parquet")


def output_uri(out: str, relpath: str, fmt: str) -> str:
    """<out>/images/<relative path of the input>.<fmt>: mirrors the input tree, never escapes <out>."""
    rel = storage.safe_relpath(relpath)
    ext = os.path.splitext(rel)[1].lower().lstrip(".")
    if not (ext == fmt or {ext, fmt} <= {"jpg", "jpeg"}):  # keep a.png / a.jpg as is, a.jpg -> a.jpg.png
        rel = f"{rel}.{fmt}"
    return storage.join(out, IMAGES_DIR, rel)
