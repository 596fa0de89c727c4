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
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from rasr import catalog, storage
from rasr.restoration import images
from rasr.catalog import Item
from rasr.retrieval.encoder_names import DEFAULT_ENCODER, ENCODERS
from rasr.options import STRICT, Identity, option

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
class DatasetConfig(Identity):
    """Defaults: RASR-Flickr30 (40 train / 5 test / the rest as the reference database, 768 crops)."""

    __pydantic_config__ = STRICT

    train: int = option(40, "Training images per category.", low=0)
    test: int = option(5, "Test images per category (the rest: reference DB).", low=0)
    crop: int = option(768, "HR crop size of train/test images.", low=64)
    top_k: int = option(5, "References kept per training image.", low=1)
    seed: int = option(0, "Seed of the split and of the self-pair crops.")
    self_crop: int = option(512, "Crop size of the self-reference pairs.", low=64)
    self_pairs_per_image: int = option(0, "Self-reference pairs (two random crops of one image) per training image.",
                                       flags=("--self-pairs",), low=0)
    encoder: str = option(DEFAULT_ENCODER, "Retrieval encoder of the reference DB.", choices=tuple(ENCODERS))


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


def samples(splits: dict[str, dict[str, list[Item]]], cfg: DatasetConfig, out: str,
            retrieve: Callable[[np.ndarray, str, int], tuple[list[str], list[float]]]) -> tuple[list[dict], list[dict]]:
    """Write the HR crops of every train/test image (and its self-reference pairs) under `out`; returns
    (dataset rows, skipped sources). retrieve(gt, category, k) -> (reference uris, similarities) of a
    training GT (rasr.retrieval.search.Retriever.retrieve); a source that cannot be decoded or cropped is skipped
    with its reason."""
    rows, skipped = [], []
    for cat, sp in splits.items():
        for split in ("train", "test"):
            for it in sp[split]:
                try:
                    rgb = images.decode_image(storage.read_bytes(it.uri)).rgb
                    gt, box = center_crop(rgb, cfg.crop)
                except Exception as e:  # noqa: BLE001 - a bad source image is reported, not fatal
                    skipped.append({"uri": it.uri, "error": storage.redact(str(e))})
                    continue
                gt_uri = storage.join(out, split, os.path.splitext(it.relpath)[0] + ".png")
                write_png(gt_uri, gt)
                refs, sims = retrieve(gt, cat, cfg.top_k) if split == "train" else ([], [])
                rows.append({"split": split, "kind": "retrieval", "category": cat, "gt_uri": gt_uri,
                             "source_uri": it.uri, "crop_box": box, "ref_uris": refs, "ref_similarities": sims})
                if split == "train":
                    rows += self_pairs(rgb, it, cat, cfg, out)
    return rows, skipped


def self_pairs(rgb: np.ndarray, it: Item, category: str, cfg: DatasetConfig, out: str) -> list[dict]:
    """The paper's self-reference pairs: two random crops of one training image (GT, reference)."""
    rows = []
    stem = os.path.splitext(it.relpath)[0].replace("/", "__")
    for j in range(cfg.self_pairs_per_image):
        (a, box_a), (b, _) = random_crops(rgb, cfg.self_crop, stable_seed(cfg.seed, it.relpath, j))
        a_uri = storage.join(out, "self", f"{stem}_{j}_a.png")
        b_uri = storage.join(out, "self", f"{stem}_{j}_b.png")
        write_png(a_uri, a)
        write_png(b_uri, b)
        rows.append({"split": "train", "kind": "self", "category": category, "gt_uri": a_uri,
                     "source_uri": it.uri, "crop_box": box_a, "ref_uris": [b_uri], "ref_similarities": [float("nan")]})
    return rows


@dataclass
class DatasetPlan:
    """A dataset build before its samples are made: the source images by category, split, and what says
    whether an earlier build already made them (`key`, kept in the done-marker OUT/_done/dataset.json)."""

    src: str
    out: str
    cfg: DatasetConfig
    splits: dict[str, dict[str, list[Item]]]
    key: dict

    @property
    def marker(self) -> str:
        return storage.join(self.out, catalog.DONE_DIR, "dataset.json")

    @property
    def references(self) -> str:
        return storage.join(self.out, "reference")

    @property
    def db(self) -> str:
        return storage.join(self.out, "refs.lance")

    def done(self) -> dict | None:
        """The summary of an earlier build of the same listing and config, or None."""
        if storage.exists(self.marker):
            marker = storage.read_json(self.marker)
            if {k: marker.get(k) for k in self.key} == self.key:
                return marker["summary"]
        return None

    def copy_references(self) -> None:
        """The reference split copied under OUT/reference/<category>/ (indexed next, as a gallery)."""
        for sp in self.splits.values():
            for it in sp["reference"]:
                storage.write_bytes(storage.join(self.references, it.relpath), storage.read_bytes(it.uri))

    def calls(self) -> list[tuple]:
        """One sampling call per category (DatasetActor.samples): its train and test items, the config, OUT."""
        return [({c: {k: [asdict(i) for i in sp[k]] for k in ("train", "test")}}, asdict(self.cfg), self.out)
                for c, sp in self.splits.items()]

    def finish(self, done: list[tuple[list[dict], list[dict]]], seconds: float) -> tuple[dict, list[dict]]:
        """dataset.parquet from the categories' (rows, skipped), in category order, then the done-marker last;
        returns (summary, skipped sources)."""
        rows = [r for part, _ in done for r in part]
        skipped = [s for _, part in done for s in part]
        storage.write_parquet(storage.join(self.out, "dataset.parquet"), rows, DATASET_SCHEMA)
        summary = {"src": storage.redact(self.src), "out": storage.redact(self.out), "categories": len(self.splits),
                   "train": sum(r["split"] == "train" and r["kind"] == "retrieval" for r in rows),
                   "self_pairs": sum(r["kind"] == "self" for r in rows),
                   "test": sum(r["split"] == "test" for r in rows),
                   "reference": sum(len(sp["reference"]) for sp in self.splits.values()), "skipped": len(skipped),
                   "seconds": round(seconds, 2)}
        storage.write_json(self.marker, {**self.key, "summary": summary})
        return summary, skipped


def plan(src: str, out: str, cfg: DatasetConfig) -> DatasetPlan:
    """List SRC/<category>/<image>, split each category (train / test / reference)."""
    items = [i for i in catalog.list_inputs(src) if i.is_image and "/" in i.relpath]
    if not items:
        raise ValueError(f"no images in category sub-folders under {storage.redact(src)} (expected SRC/<category>/<image>)")
    by_cat: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_cat[catalog.category_of(it.relpath)].append(it)
    splits = {c: split_category(v, cfg, c) for c, v in sorted(by_cat.items())}
    return DatasetPlan(src, out, cfg, splits, {"config": cfg.hash(), "listing": catalog.shard_id("listing", items)})
