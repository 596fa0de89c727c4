"""Training data for RefDSR, as RASR-Flickr30 is built: per category a seeded split into train / test /
reference database, HR crops, and for every training image its top-5 references by cosine similarity
to the GT from the reference database of its category. Plus self-reference pairs (two random crops of
one image: the paper's LSDIR recipe).

Output layout under OUT:
    train/<category>/<name>.png        HR crops (crop x crop)
    test/<category>/<name>.png
    reference/<category>/<file>        the reference database (copied as is)
    self/<name>_a.png, _b.png          self-reference pairs
    refs.lance                         the reference database indexed (the pipeline's gallery code)
    dataset.parquet                    one row per training/test sample (fields: DATASET_SCHEMA)
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from rasr import catalog, images, storage
from rasr.catalog import Item
from rasr.encoder_names import DEFAULT_ENCODER

DATASET_SCHEMA = pa.schema([
    pa.field("split", pa.string()),          # train | test
    pa.field("kind", pa.string()),           # retrieval | self
    pa.field("category", pa.string()),
    pa.field("gt_uri", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("crop_box", pa.list_(pa.int32())),  # top, left, height, width in the source image
    pa.field("ref_uris", pa.list_(pa.string())),
    pa.field("ref_similarities", pa.list_(pa.float32())),
])


@dataclass
class DatasetConfig:
    """Defaults: RASR-Flickr30 (40 train / 5 test / the rest as the reference database, 768 crops)."""

    train: int = 40
    test: int = 5
    crop: int = 768
    top_k: int = 5
    seed: int = 0
    self_crop: int = 512
    self_pairs_per_image: int = 0     # self-reference pairs drawn from each training image
    encoder: str = DEFAULT_ENCODER

    def hash(self) -> str:
        return catalog.config_hash(asdict(self))


def split_category(items: list[Item], cfg: DatasetConfig, category: str) -> dict[str, list[Item]]:
    """Seeded split of one category. Small categories keep >= 1 reference and >= 1 test image when possible."""
    order = sorted(items, key=lambda i: stable_digest(cfg.seed, category, i.relpath))
    n = len(order)
    n_test = min(cfg.test, max(0, n - 2)) if n >= 3 else 0
    n_train = min(cfg.train, max(0, n - n_test - 1))
    return {"train": order[:n_train], "test": order[n_train:n_train + n_test], "reference": order[n_train + n_test:]}


def center_crop(rgb: np.ndarray, size: int, multiple: int = 16) -> tuple[np.ndarray, list[int]]:
    """Centre crop of `size` (or the largest multiple of 16 that fits); returns (crop, [top, left, h, w])."""
    h, w = rgb.shape[:2]
    s = min(size, h, w)
    s -= s % multiple
    if s < multiple * 4:
        raise images.ImageError(f"{w}x{h} is too small for a training crop")
    top, left = (h - s) // 2, (w - s) // 2
    return np.ascontiguousarray(rgb[top:top + s, left:left + s]), [top, left, s, s]


def random_crops(rgb: np.ndarray, size: int, seed: int, n: int = 2) -> list[tuple[np.ndarray, list[int]]]:
    """n random crops of `size` (clipped to the image) from one image, seeded."""
    h, w = rgb.shape[:2]
    s = min(size, h, w)
    s -= s % 16
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out.append((np.ascontiguousarray(rgb[top:top + s, left:left + s]), [top, left, s, s]))
    return out


def write_png(uri: str, rgb: np.ndarray) -> None:
    storage.write_bytes(uri, images.encode_image(rgb, "png"))


def stable_digest(*parts) -> bytes:
    """sha256 of the parts as text joined by NUL: the same on every run, process and machine."""
    return hashlib.sha256("\0".join(map(str, parts)).encode()).digest()


def stable_seed(*parts) -> int:
    """A 32-bit seed derived from the parts (e.g. run seed, relative path, index): no RNG state to keep."""
    return int.from_bytes(stable_digest(*parts)[:4], "little")
