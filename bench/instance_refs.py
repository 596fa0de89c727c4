"""Same-scene reference transfer (rasr/restoration/transfer.py), measured end to end on real photos available offline.

Queries are x4 LR views (clean PIL-bicubic LR, and the Real-ESRGAN degradation of rasr/research/degrade.py) of:

  real        two real captures of one scene: Debian's opencv-doc examples (graf3<-graf1, aero3<-aero1,
              box_in_scene<-box, aloeL<-aloeR, leuvenB<-leuvenA, rubberwhale2<-rubberwhale1,
              basketball2<-basketball1) and scikit-image's stereo motorcycle (left<-right); the first is the
              ground truth, the second is in the gallery
  synthetic   scikit-image / scikit-learn photos (the whole photo, and with the full run its central 80% too), the
              gallery holding each photo under random viewpoints (homography), crops and exposure changes: it
              flatters any transfer, so it is reported apart
  negative    >= 20 photos whose scene is not in the gallery: every output must be byte-identical to
              --reference-transfer off

The gallery holds the references plus distractors in the same category folders; it is indexed with the library's
own Embedder (efficientnet-lite0) and each query runs through EnhanceWorker (top-k 3) twice: --reference-transfer
auto and off. PSNR and SSIM are scikit-image's, on Y (BT.601, rgb2ycbcr), against the ground-truth view.

    apt-get install opencv-doc           # the two-view photos (/usr/share/doc/opencv-doc/examples/data)
    python bench/instance_refs.py        # both degradations, both generators (~15 min on 2 cores)
    python bench/instance_refs.py --quick  # clean LR only for realesrgan, one warp per photo (~5 min)
    python bench/instance_refs.py --smoke  # the motorcycle, one warp, 3 negatives, bicubic only (tests/test_benches.py)

The last line printed is one JSON object: psnr_gain_realesrgan_real, psnr_gain_bicubic_real, psnr_gain_synthetic,
false_transfer_rate, negatives, time_ratio, and more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rasr.restoration.transfer import MIN_INLIERS

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
REAL = [("graf3.png", "graf1.png"), ("aero3.jpg", "aero1.jpg"), ("box_in_scene.png", "box.png"),
        ("aloeL.jpg", "aloeR.jpg"), ("leuvenB.jpg", "leuvenA.jpg"), ("rubberwhale2.png", "rubberwhale1.png"),
        ("basketball2.png", "basketball1.png")]
SYNTHETIC = ["coffee", "rocket", "chelsea", "china"]
NEGATIVES_CV = ["baboon.jpg", "building.jpg", "fruits.jpg", "home.jpg", "messi5.jpg", "orange.jpg", "apple.jpg",
                "butterfly.jpg", "squirrel_cls.jpg", "HappyFish.jpg", "board.jpg", "stuff.jpg", "smarties.png",
                "starry_night.jpg", "pic1.png", "licenseplate_motion.jpg", "Blender_Suzanne1.jpg"]
NEGATIVES_SK = ["astronaut", "immunohistochemistry", "hubble_deep_field", "camera", "flower"]
DISTRACTORS_CV = ["left01.jpg", "pic2.png", "pic3.png", "pic4.png", "notes.png", "text_defocus.jpg", "lena.jpg",
                  "WindowsLogo.jpg", "LinuxLogo.jpg", "chicky_512.png", "detect_blob.png", "gradient.png"]
DISTRACTORS_SK = ["brick", "grass", "gravel", "retina", "moon", "page", "text", "clock", "coins", "cell",
                  "colorwheel"]
GENERATORS = ("bicubic", "realesrgan")


# ---- photos ----------------------------------------------------------------------------------------------------

def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


def cv_photo(name: str) -> np.ndarray | None:
    path = os.path.join(OPENCV_DATA, name)
    return _rgb(Image.open(path).convert("RGB")) if os.path.exists(path) else None


def sk_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return _rgb(load_sample_image(f"{name}.jpg"))
    import skimage.data

    return _rgb(getattr(skimage.data, name)())


def crop4(a: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Centre crop to at most `max_side` and to a multiple of 4."""
    h, w = a.shape[:2]
    if max_side:
        h2, w2 = min(h, max_side), min(w, max_side)
        a = a[(h - h2) // 2:(h - h2) // 2 + h2, (w - w2) // 2:(w - w2) // 2 + w2]
        h, w = h2, w2
    return np.ascontiguousarray(a[:h - h % 4, :w - w % 4])


def synthetic_capture(hr: np.ndarray, seed: int) -> np.ndarray:
    """Another 'capture' of `hr`: a random viewpoint (homography, 1.0-1.3x the resolution), a crop of 80-95% of the
    scene and an exposure change (gain, gamma)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = hr.shape[:2]
    s = rng.uniform(1.0, 1.3)
    jitter = rng.uniform(-0.06, 0.06, (4, 2)) * [w, h]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + jitter) * s
    ang = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = dst @ rot.T
    dst -= dst.min(0)
    H = cv2.getPerspectiveTransform(src, np.float32(dst))
    ow, oh = int(dst[:, 0].max()), int(dst[:, 1].max())
    ref = cv2.warpPerspective(hr, H, (ow, oh), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (ow, oh), flags=cv2.INTER_NEAREST) > 0
    ys, xs = np.nonzero(valid)
    keep = rng.uniform(0.8, 0.95)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    ch, cw = int((ys.max() - ys.min()) * keep / 2), int((xs.max() - xs.min()) * keep / 2)
    ref = ref[max(0, cy - ch):cy + ch, max(0, cx - cw):cx + cw]
    gain, gamma = rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15)
    ref = 255.0 * np.clip(gain * (ref / 255.0) ** gamma, 0, 1)
    return (ref + 0.5).astype(np.uint8)


def bicubic_lr(hr: np.ndarray) -> np.ndarray:
    h, w = hr.shape[:2]
    return np.asarray(Image.fromarray(hr).resize((w // 4, h // 4), Image.BICUBIC))


def realesrgan_lr(hr: np.ndarray, seed: int) -> np.ndarray:
    from rasr.research.evaluation import degrade_one

    return degrade_one(hr, seed)[0]


# ---- scores (scikit-image's, on Y) -----------------------------------------------------------------------------

def y_channel(a: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2ycbcr

    return rgb2ycbcr(a)[..., 0]


def psnr_y(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(y_channel(b), y_channel(a), data_range=255))


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(y_channel(b), y_channel(a), data_range=255, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))


# ---- the run ---------------------------------------------------------------------------------------------------

def build(root: str, quick: bool, smoke: bool = False) -> dict:
    """Writes gallery/ and the GT views; returns {"queries": [(kind, name, hr)], "gallery": n}."""
    queries, gallery = [], {}
    for q, r in ([] if smoke else REAL):
        hq, hr_ = cv_photo(q), cv_photo(r)
        if hq is None or hr_ is None:
            raise SystemExit(f"{OPENCV_DATA}/{q} or {r} is missing: apt-get install opencv-doc")
        queries.append(("real", q.rsplit(".", 1)[0], crop4(hq, 800 if quick else None)))
        gallery[f"scenes/{r.rsplit('.', 1)[0]}.png"] = hr_
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    queries.append(("real", "motorcycle_left", crop4(_rgb(left))))
    gallery["scenes/motorcycle_right.png"] = _rgb(right)
    for i, name in enumerate(SYNTHETIC[:1] if smoke else SYNTHETIC):
        hr = crop4(sk_photo(name))
        for k in range(1 if quick else 2):
            h, w = hr.shape[:2]  # the second query is another view: the central 80%
            view = hr if k == 0 else crop4(hr[h // 10:h - h // 10, w // 10:w - w // 10])
            queries.append(("synthetic", f"{name}-{k}", view))
            gallery[f"photos/{name}-capture{k}.png"] = synthetic_capture(hr, 1000 * i + k)
    for name in ([] if smoke else NEGATIVES_CV):
        a = cv_photo(name)
        if a is not None:
            queries.append(("negative", name.rsplit(".", 1)[0], crop4(a, 384 if quick else 640)))
    for name in (NEGATIVES_SK[:3] if smoke else NEGATIVES_SK):
        queries.append(("negative", name, crop4(sk_photo(name), 384 if quick else 640)))
    for k, name in enumerate([] if smoke else DISTRACTORS_CV):
        a = cv_photo(name)
        if a is not None:
            gallery[f"{'scenes' if k % 2 else 'photos'}/{name.rsplit('.', 1)[0]}.png"] = a
    for k, name in enumerate(DISTRACTORS_SK[:3] if smoke else DISTRACTORS_SK):
        gallery[f"{'photos' if k % 2 else 'scenes'}/{name}.png"] = sk_photo(name)
    for rel, a in gallery.items():
        os.makedirs(os.path.join(root, "gallery", os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(a).save(os.path.join(root, "gallery", rel), compress_level=1)
    return {"queries": queries, "gallery": len(gallery)}


def index(root: str) -> str:
    from rasr import catalog
    from rasr.retrieval.encoders import load_encoder
    from rasr.retrieval.gallery import Gallery
    from rasr.retrieval.embedding import Embedder

    db = os.path.join(root, "refs.lance")
    enc = load_encoder("efficientnet-lite0")
    rows, errors = Embedder(enc).embed(catalog.list_inputs(os.path.join(root, "gallery")))
    assert not errors, errors
    Gallery.create_or_open(db, "gallery", enc.id, enc.dim).upsert(rows)
    return db


def warm_features(db: str) -> tuple[int, float]:
    """Every gallery photo's features into the cache beside the gallery, as the first queries would: (n, seconds)."""
    from rasr.retrieval.gallery import Gallery
    from rasr.restoration.transfer import FeatureCache

    g = Gallery.open(db, "gallery")
    ids, uris, _, _ = g._load_matrix()
    cache = FeatureCache(db)
    t0 = time.perf_counter()
    for rid, uri in zip(ids, uris):
        cache.get(rid, uri)
    return len(ids), time.perf_counter() - t0


def write_inputs(root: str, queries: list, degradation: str) -> str:
    folder = os.path.join(root, f"in-{degradation}")
    for i, (kind, name, hr) in enumerate(queries):
        lr = bicubic_lr(hr) if degradation == "bicubic" else realesrgan_lr(hr, 7919 + i)
        os.makedirs(os.path.join(folder, kind), exist_ok=True)
        Image.fromarray(lr).save(os.path.join(folder, kind, f"{name}.png"))
    return folder


def enhance(inputs: str, db: str, out: str, generator: str, transfer: str, kinds: set[str]) -> tuple[dict, float]:
    """{relpath: (row, output bytes)} of one EnhanceWorker pass over the queries of `kinds`, and its wall time."""
    from rasr import catalog, storage
    from rasr.restoration.worker import EnhanceWorker
    from rasr.restoration.enhance_run import EnhanceConfig

    items = [i for i in catalog.list_inputs(inputs) if i.relpath.split("/")[0] in kinds]
    cfg = EnhanceConfig(generator=generator, db=db, top_k=3, reference_transfer=transfer)
    worker = EnhanceWorker(cfg)
    t0 = time.perf_counter()
    rows = worker.process(items, out, "s0", "bench")
    wall = time.perf_counter() - t0
    worker.close()
    bad = [(r["relpath"], r["error"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    return {r["relpath"]: (r, storage.read_bytes(r["output_uri"])) for r in rows}, wall


def decode(data: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="clean LR only for realesrgan, one warp per photo")
    ap.add_argument("--smoke", action="store_true", help="a few photos, bicubic only: that the bench runs")
    args = ap.parse_args(argv)
    quick = args.quick or args.smoke
    generators = ("bicubic",) if args.smoke else GENERATORS
    os.environ.setdefault("RASR_QUIET", "1")
    root = tempfile.mkdtemp(prefix="rasr-instance-")
    t_start = time.perf_counter()
    data = build(root, quick, args.smoke)
    queries = data["queries"]
    gt = {f"{kind}/{name}.png": hr for kind, name, hr in queries}
    db = index(root)
    n_refs, t_feat = warm_features(db)
    print(f"gallery: {data['gallery']} photos (features cached: {t_feat / n_refs * 1e3:.0f} ms each, once); "
          f"queries: " + ", ".join(f"{sum(q[0] == k for q in queries)} {k}" for k in ("real", "synthetic", "negative")))
    results, times = [], {}
    for degradation in ("bicubic",) if args.smoke else ("bicubic", "realesrgan"):
        inputs = write_inputs(root, queries, degradation)
        for gen in generators:
            if quick and degradation == "realesrgan" and gen == "realesrgan":
                continue
            runs = {}
            for mode in ("off", "auto"):
                out = os.path.join(root, f"out-{degradation}-{gen}-{mode}")
                pos, t_pos = enhance(inputs, db, out, gen, mode, {"real", "synthetic"})
                neg, _ = enhance(inputs, db, out, gen, mode, {"negative"})
                runs[mode] = {**pos, **neg}
                times[(degradation, gen, mode)] = t_pos
            for rel, (row, data_auto) in runs["auto"].items():
                _, data_off = runs["off"][rel]
                kind = rel.split("/")[0]
                hr = gt[rel]
                a, o = decode(data_auto), decode(data_off)
                results.append({"degradation": degradation, "generator": gen, "kind": kind, "name": rel,
                                "match": row["ref_match"], "inliers": row["ref_inliers"] or 0,
                                "coverage": row["ref_coverage"] or 0.0, "identical": data_auto == data_off,
                                "psnr_off": psnr_y(o, hr), "psnr_auto": psnr_y(a, hr),
                                "ssim_off": ssim_y(o, hr), "ssim_auto": ssim_y(a, hr)})
    summary = report(results, times, generators)
    summary["minutes"] = round((time.perf_counter() - t_start) / 60, 1)
    summary["mode"] = "smoke" if args.smoke else "quick" if args.quick else "full"
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary))
    return summary


def _round(v, n: int = 3):
    return None if v is None else round(v, n)


def report(results: list[dict], times: dict, generators=GENERATORS) -> dict:
    print(f"\n{'degradation':<11} {'generator':<10} {'query':<32} {'match':<10} {'inl':>4} {'cover':>6} "
          f"{'PSNR off':>8} {'auto':>7} {'gain':>6} {'SSIM gain':>9}")
    for r in results:
        if r["kind"] == "negative":
            continue
        print(f"{r['degradation']:<11} {r['generator']:<10} {r['name']:<32} {r['match']:<10} {r['inliers']:>4} "
              f"{r['coverage']:>6.2f} {r['psnr_off']:>8.2f} {r['psnr_auto']:>7.2f} {r['psnr_auto'] - r['psnr_off']:>+6.2f} "
              f"{r['ssim_auto'] - r['ssim_off']:>+9.4f}")

    def gain(deg, gen, kind, key="psnr"):
        rs = [r for r in results if r["degradation"] == deg and r["generator"] == gen and r["kind"] == kind]
        return float(np.mean([r[f"{key}_auto"] - r[f"{key}_off"] for r in rs])) if rs else None

    negs = [r for r in results if r["kind"] == "negative"]
    false = [r for r in negs if not r["identical"] or r["match"] == "same_scene"]
    neg_inliers = max((r["inliers"] for r in negs), default=0)
    pos = [r for r in results if r["kind"] != "negative"]
    worst = min(r["psnr_auto"] - r["psnr_off"] for r in pos if r["kind"] == "real")
    timed = "realesrgan" if "realesrgan" in generators else generators[0]
    t_off, t_auto = times[("bicubic", timed, "off")], times[("bicubic", timed, "auto")]
    print("\nsummary (PSNR-Y gain of transfer over the same generator without it, dB; SSIM-Y gain)")
    for deg in ("bicubic", "realesrgan"):
        for gen in generators:
            g = gain(deg, gen, "real")
            if g is None:
                continue
            print(f"  {deg:<10} LR  {gen:<10}  real {g:+.2f} (SSIM {gain(deg, gen, 'real', 'ssim'):+.4f})   "
                  f"synthetic {gain(deg, gen, 'synthetic'):+.2f} (SSIM {gain(deg, gen, 'synthetic', 'ssim'):+.4f})")
    print(f"  negatives: {len(negs)} outputs, {len(false)} differ from --reference-transfer off; most inliers on a "
          f"negative {neg_inliers} (threshold {MIN_INLIERS})")
    print(f"  {timed} time over the positives: off {t_off:.1f} s, auto {t_auto:.1f} s, ratio {t_auto / t_off:.2f}")
    return {
        "psnr_gain_realesrgan_real": _round(gain("bicubic", "realesrgan", "real")),
        "psnr_gain_bicubic_real": _round(gain("bicubic", "bicubic", "real")),
        "psnr_gain_synthetic": round(min(gain("bicubic", g, "synthetic") for g in generators), 3),
        "false_transfer_rate": round(len(false) / max(1, len(negs)), 4),
        "negatives": len({r["name"] for r in negs}),
        "time_ratio": round(t_auto / t_off, 3),
        "worst_real_pair_db": round(worst, 3),
        "ssim_gain_min": round(min(r["ssim_auto"] - r["ssim_off"] for r in pos), 4),
        "max_negative_inliers": neg_inliers,
        "psnr_gain_realesrgan_real_degraded": _round(gain("realesrgan", "realesrgan", "real")),
        "psnr_gain_bicubic_real_degraded": _round(gain("realesrgan", "bicubic", "real")),
    }


if __name__ == "__main__":
    main()
