"""Flow `build_dataset`: category folders -> train / test / reference split, crops, top-k references.

A rerun with the same source listing and config is a no-op (the done-marker OUT/_done/dataset.json
holds the hash of both).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

from flows import _env  # noqa: F401  (telemetry off before Prefect loads)
from prefect import flow, get_run_logger

from flows._common import flow_setup, publish_summary
from flows.index import index_gallery
from rasr import catalog, images, storage
from rasr.dataset import (DATASET_SCHEMA, DatasetConfig, center_crop, random_crops, split_category, stable_seed,
                          write_png)
from rasr.encoders import DEFAULT_ENCODER, load_encoder
from rasr.gallery import Gallery


def _listing_hash(items: list[catalog.Item]) -> str:
    return catalog.shard_id("listing", items)


@flow(name="build-dataset")
def build_dataset(src: str, out: str, train: int = 40, test: int = 5, crop: int = 768, top_k: int = 5,
                  seed: int = 0, self_pairs_per_image: int = 0, self_crop: int = 512,
                  encoder: str = DEFAULT_ENCODER, ray_address: str | None = None,
                  show_progress: bool = False) -> dict:
    """Build a RefDSR training set from SRC (category sub-folders) into OUT; returns a summary."""
    flow_setup()
    log = get_run_logger()
    t0 = time.perf_counter()
    cfg = DatasetConfig(train=train, test=test, crop=crop, top_k=top_k, seed=seed, self_crop=self_crop,
                        self_pairs_per_image=self_pairs_per_image, encoder=encoder)
    items = [i for i in catalog.list_inputs(src) if i.is_image and "/" in i.relpath]
    if not items:
        raise ValueError(f"no images in category sub-folders under {storage.redact(src)} (expected SRC/<category>/<image>)")
    marker_uri = storage.join(out, catalog.DONE_DIR, "dataset.json")
    key = {"config": cfg.hash(), "listing": _listing_hash(items)}
    if storage.exists(marker_uri) and {k: storage.read_json(marker_uri).get(k) for k in key} == key:
        log.info("dataset is up to date: nothing to do")
        return {**storage.read_json(marker_uri)["summary"], "rebuilt": False}

    by_cat: dict[str, list[catalog.Item]] = defaultdict(list)
    for it in items:
        by_cat[catalog.category_of(it.relpath)].append(it)
    splits = {c: split_category(v, cfg, c) for c, v in sorted(by_cat.items())}

    # 1. the reference database, copied, then indexed with the pipeline's own gallery code
    for sp in splits.values():
        for it in sp["reference"]:
            storage.write_bytes(storage.join(out, "reference", it.relpath), storage.read_bytes(it.uri))
    db = storage.join(out, "refs.lance")
    index_gallery(storage.join(out, "reference"), db, encoder=encoder, table="reference", ray_address=ray_address,
                  show_progress=show_progress)
    gallery = Gallery.open(db, "reference", encoder=encoder)
    enc = load_encoder(encoder)

    # 2. HR crops of train/test images; top-k references of each training GT within its category
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
                name = os.path.splitext(it.relpath)[0] + ".png"
                gt_uri = storage.join(out, split, name)
                write_png(gt_uri, gt)
                refs, sims = [], []
                if split == "train":
                    hits = gallery.search(enc.encode([gt]), k=cfg.top_k, category=cat)[0]
                    refs, sims = [h.uri for h in hits], [h.similarity for h in hits]
                rows.append({"split": split, "kind": "retrieval", "category": cat, "gt_uri": gt_uri,
                             "source_uri": it.uri, "crop_box": box, "ref_uris": refs, "ref_similarities": sims})
                # 3. self-reference pairs: two random crops of one training image (GT, reference)
                for j in range(cfg.self_pairs_per_image if split == "train" else 0):
                    (a, box_a), (b, _) = random_crops(rgb, cfg.self_crop, stable_seed(cfg.seed, it.relpath, j))
                    stem = os.path.splitext(it.relpath)[0].replace("/", "__")
                    a_uri = storage.join(out, "self", f"{stem}_{j}_a.png")
                    b_uri = storage.join(out, "self", f"{stem}_{j}_b.png")
                    write_png(a_uri, a)
                    write_png(b_uri, b)
                    rows.append({"split": "train", "kind": "self", "category": cat, "gt_uri": a_uri,
                                 "source_uri": it.uri, "crop_box": box_a, "ref_uris": [b_uri],
                                 "ref_similarities": [float("nan")]})
    storage.write_parquet(storage.join(out, "dataset.parquet"), rows, DATASET_SCHEMA)
    summary = {"src": storage.redact(src), "out": storage.redact(out), "categories": len(splits),
               "train": sum(r["split"] == "train" and r["kind"] == "retrieval" for r in rows),
               "self_pairs": sum(r["kind"] == "self" for r in rows),
               "test": sum(r["split"] == "test" for r in rows),
               "reference": sum(len(sp["reference"]) for sp in splits.values()), "skipped": len(skipped),
               "seconds": round(time.perf_counter() - t0, 2)}
    storage.write_json(marker_uri, {**key, "summary": summary})
    publish_summary("dataset-summary", summary, errors=skipped, title=f"Dataset {storage.redact(out)}")
    return {**summary, "rebuilt": True, "errors": skipped}
