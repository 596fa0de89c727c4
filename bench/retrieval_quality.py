"""Retrieval quality on degraded photos: is the first reference of the same category as the query?

    .venv/bin/python bench/retrieval_quality.py [--per-category 30] [--seeds 0,1,2,3] [--configs a,b,...]
    .venv/bin/python bench/retrieval_quality.py --smoke   # seconds, on the bundled photos (tests/test_benches.py)

Data: `bench/photosets.py` (GCompris, MATE backgrounds, Palapeli, scikit-image; installed from
Debian, nothing downloaded): 10 categories, each capped at `--per-category` photos (seeded), photos
scaled to at most 512 px. Per category, half is indexed (the gallery), half is queried after each
degradation; every figure is the mean over several seeded splits (one split moves top-1 by up to
+-7 points on ~110 queries, so a single split cannot choose a default):

    realesrgan-x4   the project's Real-ESRGAN degradation (rasr.research.degrade, the training pipeline), x4
    x2-blur-noise-jpeg40   Gaussian blur sigma 1.5, x2 down, Gaussian noise sigma 8/255, JPEG 40
    bicubic-x4      clean x4 bicubic downscale

For each encoder configuration: top-1 and top-5 category accuracy (is the first / any of the first 5
references of the query's category), mean cosine similarity of the chosen reference, and the time
per image (one thread) to index a gallery photo (degraded views included) and to embed a query.
Baselines: a colour histogram (8x8x8 RGB bins, cosine) and
the majority class. The last line is one JSON object.

Configurations: <encoder>:<preprocessing>[+degraded-gallery], preprocessing in crop (the centre crop
of ImageNet evaluation, today's default), squash (whole image to a square), letterbox (whole image,
padded), pool (mean of crop and squash); +degraded-gallery embeds each gallery photo clean and
degraded (x4 Real-ESRGAN) and stores the mean, +degraded-gallery2 adds a second degraded copy (x2
blur+noise+JPEG); +flip pools each embedding with the mirrored image's (test-time pooling).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.photosets import load_photosets
from rasr.retrieval.encoders import load_encoder
from rasr.retrieval.embedding import degraded_copy, view_seed

DEGRADATIONS = ("realesrgan-x4", "x2-blur-noise-jpeg40", "bicubic-x4")
# the first is the old default (Lite0, centre crop, clean gallery), the second today's default
DEFAULT_CONFIGS = ("efficientnet-lite0:crop", "efficientnet-lite1:letterbox+degraded-gallery",
                   "efficientnet-lite0:letterbox+degraded-gallery", "efficientnet-lite0:letterbox",
                   "efficientnet-lite0:squash", "efficientnet-lite0:pool", "efficientnet-lite0:letterbox+degraded-gallery2",
                   "efficientnet-lite0:letterbox+degraded-gallery+flip", "efficientnet-lite1:crop",
                   "efficientnet-lite1:letterbox", "efficientnet-lite2:letterbox",
                   "efficientnet-lite2:letterbox+degraded-gallery")


def shrink(rgb: np.ndarray, max_side: int = 512) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    w4, h4 = max(4, round(w * s) // 4 * 4), max(4, round(h * s) // 4 * 4)
    return np.asarray(Image.fromarray(rgb).resize((w4, h4), Image.BICUBIC))


def realesrgan_x4(rgb: np.ndarray, seed: int) -> np.ndarray:
    return degraded_copy(rgb, seed, side=512)  # queries: x4 down from the 512 px photo


def blur_noise_jpeg(rgb: np.ndarray, seed: int) -> np.ndarray:
    img = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1.5))
    img = img.resize((img.width // 2, img.height // 2), Image.BICUBIC)
    noisy = np.asarray(img).astype(np.float32) + np.random.default_rng(seed).normal(0, 8, (img.height, img.width, 3))
    buf = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=40)
    return np.asarray(Image.open(buf).convert("RGB"))


def bicubic_x4(rgb: np.ndarray, seed: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((w // 4, h // 4), Image.BICUBIC))


DEGRADE = {"realesrgan-x4": realesrgan_x4, "x2-blur-noise-jpeg40": blur_noise_jpeg, "bicubic-x4": bicubic_x4}


def bundled_photosets() -> dict[str, list[tuple[str, np.ndarray]]]:
    """The project's bundled photos (scikit-image, scikit-learn) by category, where a category has two or more:
    the smoke mode's data, for the code path only (too few photos for a figure)."""
    from rasr import samples

    sets: dict[str, list] = {}
    for name in samples.photo_names():
        sets.setdefault(samples.category_of(name), []).append((name, samples.as_rgb(samples.load_photo(name))))
    return {c: photos for c, photos in sets.items() if len(photos) >= 2}


def build(per_category: int, seed: int, photosets=None, max_side: int = 512):
    """(gallery [(category, rgb)], queries [(category, rgb)]) with a seeded half/half split per category."""
    rng = random.Random(seed)
    gallery, queries = [], []
    for category, photos in sorted((photosets or load_photosets)().items()):
        photos = sorted(photos, key=lambda p: p[0])
        rng.shuffle(photos)
        photos = photos[:per_category]
        half = len(photos) // 2
        gallery += [(category, shrink(rgb, max_side)) for _, rgb in photos[:half]]
        queries += [(category, shrink(rgb, max_side)) for _, rgb in photos[half:]]
    return gallery, queries


def histogram(images: list[np.ndarray]) -> np.ndarray:
    out = []
    for rgb in images:
        q = (rgb.reshape(-1, 3) // 32).astype(np.int64)
        h = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).astype(np.float32)
        out.append(np.sqrt(h / h.sum()))  # Hellinger: cosine of square roots
    v = np.stack(out)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def score(gallery_vecs: np.ndarray, gallery_cats: list[str], query_vecs: np.ndarray, query_cats: list[str]) -> dict:
    sims = torch.from_numpy(query_vecs) @ torch.from_numpy(gallery_vecs).T
    top = sims.topk(min(5, sims.shape[1]), dim=1)
    cats = np.array(gallery_cats)
    hits = cats[top.indices.numpy()] == np.array(query_cats)[:, None]
    return {"top1": float(hits[:, 0].mean()), "top5": float(hits.any(1).mean()),
            "similarity": float(top.values[:, 0].mean())}


def embed(encoder, preprocessing: str, images: list[np.ndarray], flip: bool = False) -> tuple[np.ndarray, float]:
    encoder.preprocessing = preprocessing
    t0 = time.perf_counter()
    vecs = encoder.encode(images)
    if flip:  # test-time pooling: the mean with the mirrored image's embedding
        vecs = vecs + encoder.encode([np.ascontiguousarray(im[:, ::-1]) for im in images])
        vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, (time.perf_counter() - t0) / len(images) * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-category", type=int, default=30)
    ap.add_argument("--seeds", default="0,1,2,3", help="Splits to average over (one query set per seed).")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    ap.add_argument("--hygiene-sweep", action="store_true",
                    help="Instead: how gallery JPEG quality and size change top-1 with the default configuration "
                         "(the rule behind `rasr index`'s low-quality flags)")
    ap.add_argument("--smoke", action="store_true", help="Seconds: the bundled photos (two per category, 128 px), "
                                                         "one split, the first two configurations (tests)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # per-image times comparable across configurations
    photosets, max_side = None, 512
    if args.smoke:
        args.per_category, args.seeds, photosets, max_side = 2, "0", bundled_photosets, 128
        args.configs = ",".join(args.configs.split(",")[:2])
    seeds = [int(x) for x in args.seeds.split(",")]
    configs = args.configs.split(",")
    runs = [run_split(args.per_category, seed, configs, args.hygiene_sweep, photosets, max_side) for seed in seeds]
    if args.hygiene_sweep:
        return {}
    first = runs[0]
    print(f"{first['categories']} categories, {first['gallery']} gallery photos, {first['queries']} queries per split "
          f"x {len(DEGRADATIONS)} degradations, {len(seeds)} seeded splits (seeds {args.seeds}); mean over splits, "
          f"and the range across splits for top-1")
    names = list(first["results"])
    mean = {c: {d: {m: float(np.mean([r["results"][c][d][m] for r in runs])) for m in ("top1", "top5", "similarity")}
                for d in DEGRADATIONS} for c in names}
    spread = {c: {d: (min(r["results"][c][d]["top1"] for r in runs), max(r["results"][c][d]["top1"] for r in runs))
                  for d in DEGRADATIONS} for c in names}
    ms = {c: float(np.mean([r["ms"][c] for r in runs])) for c in first["ms"]}
    query_ms = {c: float(np.mean([r["query_ms"][c] for r in runs])) for c in first["query_ms"]}
    print()
    print("| configuration | index ms/img | query ms/img | " +
          " | ".join(f"{d}: top-1 (range) / top-5 / sim" for d in DEGRADATIONS) + " |")
    print("|" + "---|" * (3 + len(DEGRADATIONS)))
    for c in names:
        cells = []
        for d in DEGRADATIONS:
            r, (lo, hi) = mean[c][d], spread[c][d]
            cells.append(f"{r['top1']:.3f} ({lo:.2f}-{hi:.2f}) / {r['top5']:.3f} / {r['similarity']:.3f}".replace("nan", "-"))
        times = f"{ms[c]:.1f} | {query_ms[c]:.1f}" if c in ms else "- | -"
        print(f"| {c} | {times} | " + " | ".join(cells) + " |")
    old, new = configs[0], configs[1]
    hardest = min(DEGRADATIONS, key=lambda d: mean[old][d]["top1"])
    best = max(ms, key=lambda c: mean[c][hardest]["top1"])
    summary = {"hardest_degradation": hardest, "splits": len(seeds), "categories": first["categories"],
               "gallery": first["gallery"], "queries": first["queries"],
               "top1_old_default": mean[old][hardest]["top1"], "top1_default": mean[new][hardest]["top1"],
               "top1_baseline_histogram": mean["colour-histogram"][hardest]["top1"],
               "top1_majority": mean["majority-class"][hardest]["top1"], "best_config": best,
               "top1_best": mean[best][hardest]["top1"],
               "index_ms_old_default": ms[old], "index_ms_default": ms[new],
               "query_ms_old_default": query_ms[old], "query_ms_default": query_ms[new],
               "top1": {c: {d: round(mean[c][d]["top1"], 3) for d in DEGRADATIONS} for c in names},
               "similarity": {c: {d: round(mean[c][d]["similarity"], 3) for d in DEGRADATIONS} for c in ms}}
    print(json.dumps(summary))
    return summary


def run_split(per_category: int, seed: int, configs: list[str], sweep: bool, photosets=None,
              max_side: int = 512) -> dict:
    gallery, queries = build(per_category, seed, photosets, max_side)
    g_imgs, g_cats = [g for _, g in gallery], [c for c, _ in gallery]
    q_cats = [c for c, _ in queries]
    degraded = {d: [DEGRADE[d](rgb, seed * 1000 + i) for i, (_, rgb) in enumerate(queries)] for d in DEGRADATIONS}
    if sweep:
        hygiene_sweep(g_imgs, g_cats, degraded["realesrgan-x4"], q_cats)
        return {}
    t0 = time.perf_counter()
    g_degraded = [degraded_copy(rgb, view_seed(rgb)) for rgb in g_imgs]  # what `rasr index` pools
    degrade_ms = (time.perf_counter() - t0) / len(g_imgs) * 1e3
    counts = {c: q_cats.count(c) for c in sorted(set(q_cats))}
    results: dict[str, dict] = {}
    majority = max(counts.values()) / len(queries)
    results["majority-class"] = {d: {"top1": majority, "top5": float("nan"), "similarity": float("nan")}
                                 for d in DEGRADATIONS}
    hv = histogram(g_imgs)
    results["colour-histogram"] = {d: score(hv, g_cats, histogram(degraded[d]), q_cats) for d in DEGRADATIONS}
    ms: dict[str, float] = {}        # indexing time per gallery photo
    query_ms: dict[str, float] = {}  # embedding time per (degraded) query
    for config in configs:
        name, _, rest = config.partition(":")
        preprocessing, *extras = rest.split("+")
        enc = ENCODER_CACHE.setdefault(name, load_encoder(name, device="cpu"))
        flip = "flip" in extras
        gv, t = embed(enc, preprocessing, g_imgs, flip)
        if "degraded-gallery" in extras or "degraded-gallery2" in extras:
            dv, t_dv = embed(enc, preprocessing, g_degraded, flip)
            t += t_dv + degrade_ms  # indexing pays for making the degraded view and embedding it
            if "degraded-gallery2" in extras:
                t0 = time.perf_counter()
                extra = [blur_noise_jpeg(rgb, 20_000 + i) for i, rgb in enumerate(g_imgs)]
                dv = dv + embed(enc, preprocessing, extra, flip)[0]
                t += (time.perf_counter() - t0) / len(g_imgs) * 1e3  # making and embedding the second view
            gv = F.normalize(torch.from_numpy(gv + dv), dim=-1).numpy()
        ms[config] = t
        results[config] = {}
        q_ms = []
        for d in DEGRADATIONS:
            qv, tq = embed(enc, preprocessing, degraded[d], flip)
            q_ms.append(tq)
            results[config][d] = score(gv, g_cats, qv, q_cats)
        query_ms[config] = float(np.mean(q_ms))
        print(f"  seed {seed} {config}: top-1 {results[config]['realesrgan-x4']['top1']:.3f} on realesrgan-x4, "
              f"{t:.1f} ms per gallery image (index), {query_ms[config]:.1f} ms per query", flush=True)
    return {"results": results, "ms": ms, "query_ms": query_ms, "categories": len(set(g_cats)),
            "gallery": len(gallery), "queries": len(queries)}


ENCODER_CACHE: dict[str, object] = {}


def hygiene_sweep(g_imgs, g_cats, queries, q_cats) -> None:
    """Top-1 on the hardest degradation when every gallery photo is JPEG-compressed at quality q, or
    scaled to a short side of n px, with the default configuration (letterbox + degraded view)."""
    from rasr.retrieval.embedding import embed_views

    enc = load_encoder("efficientnet-lite0", device="cpu")
    enc.preprocessing = "letterbox"
    qv = enc.encode(queries)

    def jpeg(rgb, q):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=q)
        return np.asarray(Image.open(buf).convert("RGB"))

    def short_side(rgb, n):
        h, w = rgb.shape[:2]
        s = n / min(h, w)
        return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC))

    rows = []
    for label, make in ([(f"jpeg q={q}", lambda im, q=q: jpeg(im, q)) for q in (95, 75, 50, 30, 15, 5)]
                        + [(f"short side {n} px", lambda im, n=n: short_side(im, n)) for n in (256, 128, 64, 32, 16)]):
        gallery = [make(im) for im in g_imgs]
        gv = embed_views(enc, gallery, list(range(len(gallery))), "clean+realesrgan-x4")
        rows.append((label, score(gv, g_cats, qv, q_cats)))
    print("| gallery photos | top-1 | top-5 | similarity |")
    print("|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['top1']:.3f} | {r['top5']:.3f} | {r['similarity']:.3f} |")
    print(json.dumps({label: round(r["top1"], 3) for label, r in rows}))


if __name__ == "__main__":
    main()
