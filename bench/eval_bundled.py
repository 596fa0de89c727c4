"""Real-ESRGAN vs bicubic on the 20 bundled real photos (whole images), under two protocols:

  degraded: LR from the seeded Real-ESRGAN second-order degradation (the paper's protocol)
  clean:    LR = bicubic x4 downscale of the HR (classic SR benchmarks), given with --lr-dir

    .venv/bin/python bench/eval_bundled.py [OUT]     # ~8 min on 2 CPU cores; prints both Table 1s
    .venv/bin/python bench/eval_bundled.py --smoke   # 2 photos cropped to 96 px, PSNR/SSIM (tests/test_benches.py)

Common knowledge: Real-ESRGAN has a much better (lower) NIQE than bicubic, and a lower PSNR on clean
inputs; on degraded inputs bicubic keeps all the noise and JPEG blocks, so its PSNR advantage goes.
"""

import argparse
import os
import sys
import tempfile

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from PIL import Image

from flows.evaluate import evaluate
from rasr.research.evaluation import EvalConfig
from rasr import samples
from rasr.research.evaluation import prepare_hr


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="rasr-eval-")
    hr, lr = os.path.join(out, "hr"), os.path.join(out, "lr")
    names = samples.photo_names()[:2] if args.smoke else samples.photo_names()
    for name in names:
        img = samples.as_rgb(samples.load_photo(name))
        if args.smoke:
            y, x = (img.shape[0] - 96) // 2, (img.shape[1] - 96) // 2
            img = img[y:y + 96, x:x + 96]
        for root in (hr, lr):
            os.makedirs(os.path.join(root, samples.category_of(name)), exist_ok=True)
        Image.fromarray(img).save(os.path.join(hr, samples.category_of(name), f"{name}.png"))
        kept = prepare_hr(img, 0)  # the part of the HR that evaluate scores (multiple of 4, centred)
        h, w = kept.shape[:2]
        Image.fromarray(kept).resize((w // 4, h // 4), Image.BICUBIC).save(
            os.path.join(lr, samples.category_of(name), f"{name}.png"))
    metrics = ["psnr", "ssim"] if args.smoke else ["psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa"]
    results = {}
    for label, lr_dir in (("degraded (Real-ESRGAN degradation, seed 0)", None), ("clean (bicubic x4 LR)", lr)):
        cfg = EvalConfig(methods=["bicubic", "realesrgan"], ref_modes=["none"], lr_dir=lr_dir, metrics=metrics,
                         shard_size=5)
        res = evaluate(hr, os.path.join(out, "eval-" + label.split()[0]), cfg, show_progress=not args.smoke)
        print(f"\n{label}\n{res['table1']}\nreport: {res['report']}")
        results[label.split()[0]] = res
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
