"""Real-ESRGAN vs bicubic on the 20 bundled real photos (whole images), under two protocols:

  degraded: LR from the seeded Real-ESRGAN second-order degradation (the paper's protocol)
  clean:    LR = bicubic x4 downscale of the HR (classic SR benchmarks), given with --lr-dir

    .venv/bin/python bench/eval_bundled.py [OUT]     # ~8 min on 2 CPU cores; prints both Table 1s

Common knowledge: Real-ESRGAN has a much better (lower) NIQE than bicubic, and a lower PSNR on clean
inputs; on degraded inputs bicubic keeps all the noise and JPEG blocks, so its PSNR advantage goes.
"""

import os
import sys
import tempfile

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from PIL import Image

from flows.evaluate import evaluate
from rasr.evaluate import EvalConfig
from rasr import samples
from rasr.evaluate import prepare_hr


def main(out: str) -> None:
    hr, lr = os.path.join(out, "hr"), os.path.join(out, "lr")
    for name in samples.photo_names():
        img = samples.as_rgb(samples.load_photo(name))
        for root in (hr, lr):
            os.makedirs(os.path.join(root, samples.category_of(name)), exist_ok=True)
        Image.fromarray(img).save(os.path.join(hr, samples.category_of(name), f"{name}.png"))
        kept = prepare_hr(img, 0)  # the part of the HR that evaluate scores (multiple of 4, centred)
        h, w = kept.shape[:2]
        Image.fromarray(kept).resize((w // 4, h // 4), Image.BICUBIC).save(
            os.path.join(lr, samples.category_of(name), f"{name}.png"))
    metrics = ["psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa"]
    for label, lr_dir in (("degraded (Real-ESRGAN degradation, seed 0)", None), ("clean (bicubic x4 LR)", lr)):
        cfg = EvalConfig(methods=["bicubic", "realesrgan"], ref_modes=["none"], lr_dir=lr_dir, metrics=metrics,
                         shard_size=5)
        res = evaluate(hr, os.path.join(out, "eval-" + label.split()[0]), cfg, show_progress=True)
        print(f"\n{label}\n{res['table1']}\nreport: {res['report']}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="rasr-eval-"))
