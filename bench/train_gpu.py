"""Memory and speed of one RefDSR training step at full size: the paper's per-GPU load (batch 24 over
4 GPUs = 6 per GPU), 512x512 crops, bf16 autocast, the real Trainer step (on-GPU Real-ESRGAN
degradation, frozen SD-2.1 UNet/VAE + OSEDiff-shaped model, ControlNet branch, MSE + Gram(VGG16) +
GAN(DINOv2-small heads); LPIPS needs pyiqa and its weights and is left out, AlexNet adds ~2.5M params).

    python bench/train_gpu.py [--batch 6] [--steps 4]     # ~2 min on one H100; needs CUDA
    python bench/train_gpu.py --tiny                      # the same code path on CPU with tiny models

All networks are random-init (speed and memory don't depend on weight values); the dataset is a few
real photos. Measured 2026-11-27 on one H100 80GB HBM3 (torch 2.11, diffusers 0.42.1):

    trainable: branch 10,832,608 + discriminator heads 791,044
    batch 6 x 512px bf16: 0.693 s/step, peak 45.0 GiB
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def write_dataset(root: str, crop: int) -> None:
    """dataset.parquet with 4 training rows (real photos, each with 2 references)."""
    from PIL import Image
    from skimage import data

    from rasr import storage
    from rasr.research.dataset import DATASET_SCHEMA

    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = Image.fromarray(getattr(data, name)()).convert("RGB").resize((crop, crop), Image.BICUBIC)
        p = os.path.join(root, f"{name}.png")
        img.save(p)
        paths.append(p)
    rows = [{"split": "train", "kind": "retrieval", "category": "photos", "gt_uri": p, "source_uri": p,
             "crop_box": [0, 0, crop, crop], "ref_uris": [q for q in paths if q != p][:2],
             "ref_similarities": [0.5, 0.4]} for p in paths]
    storage.write_parquet(os.path.join(root, "dataset.parquet"), rows, DATASET_SCHEMA)


def build(tiny: bool, device: str, root: str):
    """Random-init RefDSR (new branch) and a TrainingLoss with random VGG16 and DINOv2-small backbones."""
    from transformers import Dinov2Config, Dinov2Model

    from rasr.restoration.generators import sd
    from rasr.restoration.generators.refdsr import RefDSR
    from rasr.research.losses import PAPER_WEIGHTS, TrainingLoss

    if tiny:
        from tests.tiny_sd import TINY_TEXT, TINY_UNET, TINY_VAE

        comps = sd.build_random(TINY_UNET, TINY_VAE, TINY_TEXT, device=device)
        dino = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    else:
        comps = sd.build_random(device=device)
        dino = Dinov2Config.from_dict({"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                                       "intermediate_size": 1536, "patch_size": 14, "image_size": 518})
    model = RefDSR(comps, copy.deepcopy(comps.vae))
    from torchvision.models import vgg16

    vgg_path = os.path.join(root, "vgg16-397923af.pth")
    torch.save(vgg16().state_dict(), vgg_path)  # random weights in torchvision's layout
    Dinov2Model(dino).save_pretrained(os.path.join(root, "dinov2"))
    loss = TrainingLoss(dataclasses.replace(PAPER_WEIGHTS, lpips=0.0), device=device,
                        vgg_weights=vgg_path, dino_weights=os.path.join(root, "dinov2"))
    return model, loss


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script, not the hardware")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/train_gpu.py needs a CUDA GPU (or --tiny for a CPU check of the code path)")
    device = "cpu" if args.tiny else "cuda"
    crop = 64 if args.tiny else args.crop
    from rasr.research.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as root:
        write_dataset(root, max(crop, 128))
        model, loss = build(args.tiny, device, root)
        cfg = TrainConfig(dataset=root, out=os.path.join(root, "out"), steps=args.steps + 1, batch_size=args.batch,
                          crop=crop, precision="bf16", checkpoint_every=10**9)
        t = Trainer(cfg, device=device, model=model, loss=loss)
        print(f"losses: {t.loss.status}")
        trainable = sum(p.numel() for p in t.params)
        print(f"trainable: branch {trainable:,} + discriminator heads "
              f"{sum(p.numel() for p in t.loss.discriminator_parameters()):,}")
        t.train_step(0)  # warm-up (allocator, cuDNN autotune)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for s in range(1, args.steps + 1):
            parts = t.train_step(s)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu (tiny)"
        print(f"{name}: batch {args.batch} x {crop}px bf16: {dt:.3f} s/step, peak {peak:.1f} GiB, "
              f"last loss {parts['total']:.4f}")
        if device == "cuda":
            steps = 33 * 3600 / dt  # paper: 33 h on 4 A800
            print(f"at this speed, 33 h (the paper's budget on 4 A800) = {steps:,.0f} steps of batch "
                  f"{args.batch} per GPU")
        return {"device": name, "s_per_step": dt, "peak_gib": peak, "loss": float(parts["total"]),
                "trainable": trainable}


if __name__ == "__main__":
    main()
