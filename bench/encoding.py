"""Output encoding, chosen by measurement: time and size of each format on real 512 px outputs.

Real photos (scikit-image, scikit-learn) -> 128 px crops -> Real-ESRGAN x4 (the outputs an archive
actually writes) -> each encoding timed (median of repeats) and sized; decoded pixels are compared
with the original to prove which settings are lossless.

    .venv/bin/python bench/encoding.py [--quick]

Last line: one JSON object (png1_ms, png6_ms, png6_over_png1_time, png1_over_png6_size, ...).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
from PIL import Image

from rasr import samples
from rasr.restoration import images

CANDIDATES = [("png", dict(png_level=0)), ("png", dict(png_level=1)), ("png", dict(png_level=3)),
              ("png", dict(png_level=6)), ("png", dict(png_level=9)), ("webp-lossless", {}),
              ("webp", dict(quality=95)), ("jpg", dict(quality=95)), ("tiff", {})]


def outputs(n: int, seed: int = 0, side: int = 128) -> list[np.ndarray]:
    """n Real-ESRGAN x4 outputs of `side` px crops of the bundled real photos (4 * side square each)."""
    from rasr.restoration.generators import Restorer, load_generator

    rng = np.random.default_rng(seed)
    photos = [samples.as_rgb(samples.load_photo(p)) for p in samples.photo_names()]
    photos = [p for p in photos if min(p.shape[:2]) > side]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        crops.append(np.ascontiguousarray(img[y:y + side, x:x + side]))
    return Restorer(load_generator("realesrgan"), tile=0, batch_size=4).restore(crops)


def measure(hrs: list[np.ndarray], repeats: int) -> list[dict]:
    rows = []
    for fmt, kw in CANDIDATES:
        enc = images.Encoding(fmt, **kw)
        times, sizes, exact = [], [], True
        for hr in hrs:
            best = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                data = images.encode_image(hr, enc)
                best.append(time.perf_counter() - t0)
            times.append(statistics.median(best) * 1e3)
            sizes.append(len(data))
            back = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            exact &= bool(np.array_equal(back, hr))
        rows.append({"encoding": enc.describe(), "ms": statistics.mean(times), "kb": statistics.mean(sizes) / 1024,
                     "lossless": exact})
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 images, 1 repeat")
    ap.add_argument("--smoke", action="store_true", help="1 image of 128 px: seconds (run by the test suite)")
    ap.add_argument("--images", type=int, default=24)
    args = ap.parse_args(argv)
    n, repeats = (1, 1) if args.smoke else (8, 1) if args.quick else (args.images, 3)
    side = 32 if args.smoke else 128
    hrs = outputs(n, side=side)
    rows = measure(hrs, repeats)
    print(f"{n} Real-ESRGAN outputs of {4 * side}x{4 * side} (real photos), mean per image, one thread:")
    print(f"{'encoding':<18}{'ms':>8}{'KiB':>9}  lossless")
    for r in rows:
        print(f"{r['encoding']:<18}{r['ms']:>8.1f}{r['kb']:>9.1f}  {r['lossless']}")
    by = {r["encoding"]: r for r in rows}
    p1, p6 = by["png level=1"], by["png level=6"]
    result = {
        "images": n, **{k.replace(" ", "_").replace("=", ""): round(v["ms"], 2) for k, v in by.items()},
        "png1_ms": round(p1["ms"], 2), "png6_ms": round(p6["ms"], 2),
        "png6_over_png1_time": round(p6["ms"] / p1["ms"], 2), "png1_over_png6_size": round(p1["kb"] / p6["kb"], 3),
        "webpll_over_png1_size": round(by["webp lossless"]["kb"] / p1["kb"], 3),
        "lossless": sorted(r["encoding"] for r in rows if r["lossless"]),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
