"""Gallery files made table rows: read, decode, embed (`Embedder`, run by the embedding actors), with the
degraded second view a gallery's vectors pool (`embed_views`) and the doubts recorded per reference
(`low_quality`). rasr/retrieval/index_run.py decides which files to embed and writes the rows.

The category of a file is its first folder under the gallery root (`animals/cat1.jpg` -> animals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rasr import storage
from rasr.restoration import images
from rasr.catalog import Item, category_of
from rasr.retrieval.gallery import content_id

if TYPE_CHECKING:
    from rasr.retrieval.encoders import Encoder

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
            rows.append({"id": content_id(data), "uri": it.uri, "relpath": it.relpath,
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


def low_quality(width: int, height: int, jpeg_q: int | None) -> str:
    reasons = []
    if min(width, height) < SMALL_SIDE:
        reasons.append(f"small: {width}x{height}")
    if jpeg_q is not None and jpeg_q < LOW_JPEG_QUALITY:
        reasons.append(f"heavily compressed: JPEG quality ~{jpeg_q}")
    return "; ".join(reasons)
