"""Which colour fix suits `realesrgan`? Measured on the bundled real photos, side by side in one run.

For each bundled photo (a centred crop), two LR inputs: the seeded Real-ESRGAN degradation (the paper's
protocol) and a clean bicubic x4 downscale. Real-ESRGAN restores each once; each colour fix (none, adain,
wavelet) is then applied towards the PIL-upscaled LR, as the Restorer does, and scored against the HR with
Y-channel PSNR and SSIM computed by scikit-image (not by rasr). The decision it informs: `--color-fix auto`
gives `realesrgan` wavelet, the fix that gains on both protocols without costing SSIM (figures and reasoning in
rasr/restoration/colorfix.py DEFAULTS).

    .venv/bin/python bench/color_fix.py            # 20 photos, 256 px crops: ~2 minutes on 2 CPU cores
    .venv/bin/python bench/color_fix.py --smoke    # 2 photos, 64 px crops: seconds (run by the test suite)

The last line is one JSON object: {"psnr_<protocol>_<fix>": dB, ..., "best": {protocol: fix}}.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image

FIXES = ("none", "adain", "wavelet")


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in [16, 235] of an (H, W, 3) uint8 image, as float (the SR papers' Y)."""
    x = rgb.astype(np.float64) / 255
    return 16 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 photos, 64 px crops (seconds)")
    ap.add_argument("--crop", type=int, default=256, help="HR crop side in pixels (a multiple of 4)")
    args = ap.parse_args(argv)

    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from rasr import samples
    from rasr.restoration import colorfix
    from rasr.research.evaluation import degrade_one
    from rasr.restoration.generators import Restorer, load_generator
    from rasr.restoration.images import resize_pil, to_tensor, to_uint8

    names, crop = samples.photo_names(), args.crop
    if args.smoke:
        names, crop = names[:2], 64
    g = load_generator("realesrgan")
    restorer = Restorer(g, color_fix="none")
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i, name in enumerate(names):
        img = samples.as_rgb(samples.load_photo(name))
        h, w = img.shape[:2]
        c = min(crop, h - h % 4, w - w % 4)
        hr = np.ascontiguousarray(img[(h - c) // 2:(h - c) // 2 + c, (w - c) // 2:(w - c) // 2 + c])
        lrs = {"degraded": degrade_one(hr, seed=i)[0],
               "clean": np.asarray(Image.fromarray(hr).resize((c // 4, c // 4), Image.BICUBIC))}
        for protocol, lr in lrs.items():
            raw = to_tensor(restorer.restore([lr])[0])  # the model once; the fixes after it, as the Restorer does
            lr_up = resize_pil(to_tensor(lr), (c, c))
            for fix in FIXES:
                sr = to_uint8(colorfix.apply(raw, lr_up, fix)[0])
                ys, yh = y_channel(sr)[4:-4, 4:-4], y_channel(hr)[4:-4, 4:-4]
                scores.setdefault((protocol, fix), []).append(
                    (peak_signal_noise_ratio(yh, ys, data_range=255), structural_similarity(yh, ys, data_range=255)))
        print(f"{i + 1}/{len(names)} {name}", file=sys.stderr)
    print(f"\nrealesrgan on {len(names)} bundled photos ({crop} px crops), Y channel, mean over photos")
    print(f"{'protocol':10} {'fix':8} {'PSNR':>7} {'SSIM':>7}")
    result: dict = {}
    for (protocol, fix), vals in scores.items():
        psnr, ssim = (float(np.mean(v)) for v in zip(*vals))
        print(f"{protocol:10} {fix:8} {psnr:7.3f} {ssim:7.4f}")
        result[f"psnr_{protocol}_{fix}"] = round(psnr, 4)
        result[f"ssim_{protocol}_{fix}"] = round(ssim, 5)
    result["best"] = {p: max(FIXES, key=lambda f: result[f"psnr_{p}_{f}"]) for p in ("degraded", "clean")}
    result["photos"] = len(names)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
