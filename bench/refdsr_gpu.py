"""Seconds per 512x512 output image for osediff and refdsr, batch 1 and 8, bf16, with peak GPU memory.

    python bench/refdsr_gpu.py            # ~1-2 min on one H100; refuses to run without CUDA

Full-size SD-2.1-base models are built with random init directly on the GPU: speed and memory do not depend on
weight values, so no weights are needed. Both run the production path (DiffusionGenerator.restore: bicubic x4,
text encoder, VAE encode, one UNet step (+ ControlNet for refdsr, reference 512x512), VAE decode), timed after
warm-up between torch.cuda.synchronize() calls. The paper reports 0.10 s (OSEDiff) and 0.15 s (RefDSR) per
image on an A800, batch size unstated. Measured 2026-11-27 on one H200 (torch 2.11, diffusers 0.42.1), 77 s
for the whole run including a pytest -m gpu pass:

    model    batch   s/image   img/s  peak GiB
    osediff      1    0.0912    11.0      3.06
    osediff      8    0.0272    36.8      6.51
    refdsr       1    0.1211     8.3      3.81
    refdsr       8    0.0364    27.5      7.30      refdsr / osediff = 1.33x (paper 1.5x)

and on one H100 80GB HBM3 (torch 2.11, diffusers 0.42.1), same day:

    osediff      1    0.0718    13.9      3.06
    osediff      8    0.0287    34.8      6.51
    refdsr       1    0.1260     7.9      3.81
    refdsr       8    0.0366    27.3      7.30
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def build(name: str, device: str):
    """A full-size random-init generator on `device` (bf16), as load_diffusion_generator would serve it."""
    from rasr.restoration.generators import sd
    from rasr.restoration.generators.osediff import OneStepSR
    from rasr.restoration.generators.diffusion import DiffusionGenerator
    from rasr.restoration.generators.refdsr import RefDSR

    comps = sd.build_random(device=device)
    if name == "osediff":
        model = OneStepSR(comps)
    else:
        model = RefDSR(comps, copy.deepcopy(comps.vae))
        model.fuse_branch()
    return DiffusionGenerator(name, model, comps.weights_id, device=device, dtype="bf16")


def time_one(g, batch: int, iters: int, warmup: int = 2) -> tuple[float, float]:
    """(seconds per image, peak GiB) for `batch` 128x128 LR inputs -> 512x512 outputs."""
    lr = torch.rand(batch, 3, 128, 128, device=g.device)
    ref = torch.rand(batch, 3, 512, 512, device=g.device) if g.uses_reference else None
    prompts = ["a cat, grass"] * batch
    with torch.inference_mode():
        for _ in range(warmup):
            g.restore(lr, ref, prompts)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(iters):
            out = g.restore(lr, ref, prompts)
        torch.cuda.synchronize()
        secs = (time.perf_counter() - t) / (iters * batch)
    assert out.shape == (batch, 3, 512, 512) and torch.isfinite(out).all()
    return secs, torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/refdsr_gpu.py needs a CUDA GPU (it times bf16 inference at full size); none found: "
              "run it on a GPU machine", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for name in ("osediff", "refdsr"):
        t = time.perf_counter()
        g = build(name, "cuda")
        print(f"built {name} in {time.perf_counter() - t:.1f} s", flush=True)
        for b in args.batches:
            secs, peak = time_one(g, b, args.iters)
            rows.append((name, b, secs, peak))
            print(f"  {name} batch {b}: {secs:.4f} s/image, peak {peak:.2f} GiB", flush=True)
        del g
        torch.cuda.empty_cache()
    print(f"\n{torch.cuda.get_device_name()}  bf16, 512x512 output (128x128 LR), {args.iters} timed iterations")
    print(f"{'model':<8} {'batch':>5} {'s/image':>9} {'img/s':>7} {'peak GiB':>9}")
    for name, b, secs, peak in rows:
        print(f"{name:<8} {b:>5} {secs:>9.4f} {1 / secs:>7.1f} {peak:>9.2f}")
    base = {b: s for n, b, s, _ in rows if n == "osediff"}
    for n, b, s, _ in rows:
        if n == "refdsr" and b in base:
            print(f"refdsr / osediff at batch {b}: {s / base[b]:.2f}x (paper, A800: 0.15 / 0.10 = 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
