"""Training RefDSR's reference branch (the paper's recipe) on a dataset made by `rasr dataset build`.

Only the branch trains (LoRA rank 4 + zero convs); SD, OSEDiff's LoRA and both VAEs stay frozen.
Loss MSE + 2 LPIPS + 1e-3 Gram(VGG16) + 0.1 GAN(DINO) (terms without weights switch off, logged and
recorded), AdamW 5e-5, mixed precision, gradient accumulation.

Every random choice of step s (which samples, crops, which of the top-5 references, degradation
seeds) is drawn from a generator seeded with (seed, s, micro-batch, rank): no RNG state has to be
saved, and a resumed run sees exactly the batches an uninterrupted one would. A checkpoint holds the
branch (safetensors), the optimiser states (tensors, loaded with weights_only) and the step.

    t = Trainer(TrainConfig(dataset="ds/", out="runs/r1", sd_base=..., osediff_weights=..., steps=1000))
    t.run()            # resumes from runs/r1/checkpoints/latest.json when it exists
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from rasr import storage
from rasr.restoration import images
from rasr.research.dataset import stable_seed
from rasr.devices import DTYPES, pick_device
from rasr.research.losses import PAPER_WEIGHTS, TERMS, LossWeights, TrainingLoss
from rasr.options import STRICT, option

log = logging.getLogger("rasr.train")
CKPT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Defaults follow the paper where it says (AdamW 5e-5, fusion 1.0 in training, loss weights)."""

    __pydantic_config__ = STRICT

    dataset: str = option("", "Folder made by `rasr dataset build` (dataset.parquet inside).", cli=False)
    out: str = option("", "Checkpoints go to <out>/checkpoints (local or s3://).", cli=False)
    sd_base: str | None = option(None, "SD-2.1-base: folder, s3:// or hub id.", envvar="RASR_SD_BASE")
    osediff_weights: str | None = option(None, "OSEDiff LoRA (osediff.pkl).", envvar="RASR_OSEDIFF_WEIGHTS")
    init_branch: str | None = option(None, "Start from a saved reference branch instead of zeros.")
    steps: int = option(1000, "Optimiser steps to train to (a rerun resumes from the latest checkpoint).", low=1)
    batch_size: int = option(4, "Per worker and micro-batch.", low=1)
    grad_accum: int = option(1, "Micro-batches per optimiser step.", low=1)
    lr: float = option(5e-5, "AdamW learning rate.", low=0)
    crop: int = option(512, "HR training crop (multiple of 64).", low=64)
    precision: str = option("fp32", "Autocast precision (fp16 uses a grad scaler).", choices=("fp32", "bf16", "fp16"))
    seed: int = option(0, "Seed of the crops, the degradations and the branch's initialisation.")
    checkpoint_every: int = option(100, "Steps between checkpoints.", low=1)
    fusion_scale: float = option(1.0, "RefDSR reference fusion weight while training.")
    # loss weights: flat fields, so checkpoints' state.json keeps its shape (command line: --loss NAME=WEIGHT)
    mse: float = option(PAPER_WEIGHTS.mse, "MSE loss weight.", cli=False)
    lpips: float = option(PAPER_WEIGHTS.lpips, "LPIPS loss weight.", cli=False)
    gram: float = option(PAPER_WEIGHTS.gram, "Gram (VGG style) loss weight.", cli=False)
    gan: float = option(PAPER_WEIGHTS.gan, "GAN loss weight.", cli=False)
    vgg_weights: str | None = option(None, "torchvision vgg16 .pth for the Gram loss.")
    dino_weights: str | None = option(None, "DINOv2 (folder or hub id) for the GAN discriminator.")
    fixed_batch: bool = option(False, "Reuse step 0's batch every step (overfitting checks).", cli=False)
    log_every: int = option(10, "Steps between log lines.", cli=False)
    extra: dict = option(help="Free-form settings recorded with the checkpoints.", factory=dict, cli=False)

    def loss_weights(self) -> LossWeights:
        """The four loss-weight fields as the LossWeights that TrainingLoss takes."""
        return LossWeights(**{t: getattr(self, t) for t in TERMS})


def _latest_uri(out: str) -> str:
    return storage.join(out, CKPT_DIR, "latest.json")


def latest_checkpoint(out: str) -> dict | None:
    """The newest complete checkpoint's record (its pointer is written last), or None."""
    uri = _latest_uri(out)
    return storage.read_json(uri) if storage.exists(uri) else None


def _save_tensors(uri: str, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    storage.write_bytes(uri, buf.getvalue())


def _load_tensors(uri: str):
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


class TrainSet:
    """The training rows of dataset.parquet; images decoded once and kept (datasets are ~1k crops)."""

    def __init__(self, dataset: str):
        uri = storage.join(dataset, "dataset.parquet")
        if not storage.exists(uri):
            raise FileNotFoundError(f"{storage.redact(uri)} not found: build it with `rasr dataset build SRC {dataset}`")
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
        self.rows = [r for r in table if r["split"] == "train" and r["ref_uris"]]
        if not self.rows:
            raise ValueError(f"{storage.redact(uri)} has no training rows with references")
        self._images = images.DecodedCache()

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, uri: str) -> np.ndarray:
        return self._images.get(uri)


def _crop(rgb: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(size, h, w)
    top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    out = rgb[top:top + s, left:left + s]
    if s != size:  # smaller crops are resized up so a batch stacks
        from PIL import Image

        out = np.asarray(Image.fromarray(out).resize((size, size), Image.BICUBIC))
    return out


class Trainer:
    """One training process (one worker of a data-parallel run: rank of world)."""

    def __init__(self, cfg: TrainConfig, device: str | None = None, rank: int = 0, world: int = 1,
                 model=None, loss=None):
        """`model` / `loss` replace the ones built from cfg (benchmarks pass random-init full-size ones)."""
        from rasr.restoration.generators.diffusion import build_model

        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = pick_device(device)
        if cfg.crop % 64:
            raise ValueError(f"--crop {cfg.crop} must be a multiple of 64 (SD's VAE x8 and UNet x8)")
        if model is None:
            with torch.random.fork_rng(devices=[]):  # a new branch's LoRA A is random: seed it, so runs repeat
                torch.manual_seed(cfg.seed)
                model, _ = build_model("refdsr", cfg.sd_base, cfg.osediff_weights, cfg.init_branch,
                                       new_branch=cfg.init_branch is None)
        self.model = model.to(self.device)
        self.loss = (loss or TrainingLoss(cfg.loss_weights(), device=self.device,
                                          vgg_weights=cfg.vgg_weights, dino_weights=cfg.dino_weights)).to(self.device)
        self.params = self.model.trainable_parameters()
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr)
        d_params = self.loss.discriminator_parameters()
        self.opt_d = torch.optim.AdamW(d_params, lr=cfg.lr) if d_params else None
        self.amp = DTYPES[cfg.precision] if cfg.precision != "fp32" else None
        use_scaler = cfg.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.data = TrainSet(cfg.dataset)
        self.step = 0
        self.history: list[dict] = []
        self.sync_grads = None  # data-parallel runners set it: averages gradients across workers

    # ---- data ----------------------------------------------------------------------------------
    def batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """(lr_up, ref, prompts, gt) of one micro-batch; images in [-1, 1], (B, 3, crop, crop)."""
        from rasr.research.degrade import degrade
        from rasr.restoration.tagger import build_prompt

        s = 0 if self.cfg.fixed_batch else step
        rng = np.random.default_rng([self.cfg.seed, s, micro, self.rank])
        idx = rng.choice(len(self.data), size=self.cfg.batch_size, replace=len(self.data) < self.cfg.batch_size)
        gts, refs, prompts, seeds = [], [], [], []
        for j, i in enumerate(idx):
            row = self.data.rows[int(i)]
            gts.append(images.to_tensor(_crop(self.data.image(row["gt_uri"]), self.cfg.crop, rng)))
            ref_uri = row["ref_uris"][int(rng.integers(len(row["ref_uris"])))]  # a random one of the top-k
            refs.append(images.to_tensor(_crop(self.data.image(ref_uri), self.cfg.crop, rng)))
            prompts.append(build_prompt("", row["category"].replace("_", " ")))
            seeds.append(stable_seed(self.cfg.seed, s, micro, self.rank, j))
        gt = torch.cat(gts).to(self.device)
        lr, _ = degrade(gt, seeds)  # Real-ESRGAN degradation on the fly, seeded per sample
        # upscaled as at inference (PIL's bicubic, as OSEDiff): the branch learns on what it will be given
        lr_up = images.resize_pil(lr, (lr.shape[-2] * 4, lr.shape[-1] * 4))
        ref = torch.cat(refs).to(self.device)
        return lr_up * 2 - 1, ref * 2 - 1, prompts, gt * 2 - 1

    # ---- one optimiser step --------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """Accumulate `grad_accum` micro-batches, update the branch (and the discriminator heads)."""
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        if self.opt_d:
            self.opt_d.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(self.cfg.grad_accum):
            lr_up, ref, prompts, gt = self.batch(step, micro)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                text = self.model.text_embeddings(prompts)
                pred = self.model.forward_train(lr_up, ref, text, fusion_scale=self.cfg.fusion_scale)
                g_loss, parts = self.loss.generator_loss(pred.float(), gt)
            self.scaler.scale(g_loss / self.cfg.grad_accum).backward()
            if self.opt_d:
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    d_loss, d_parts = self.loss.discriminator_loss(pred.detach().float(), gt)
                (d_loss / self.cfg.grad_accum).backward()
                parts = {**parts, **{f"d_{k}": v for k, v in d_parts.items()}}
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.cfg.grad_accum
        if self.sync_grads:
            self.sync_grads(self.params)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.opt_d:
            if self.sync_grads:
                self.sync_grads(self.loss.discriminator_parameters())
            self.opt_d.step()
        if not math.isfinite(totals.get("total", 0.0)):
            raise FloatingPointError(f"loss became {totals.get('total')} at step {step}: lower --lr or use fp32/bf16")
        return totals

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self) -> str:
        """<out>/checkpoints/step-XXXXXXX/{branch/, optim.pt, state.json}; latest.json is written last."""
        d = storage.join(self.cfg.out, CKPT_DIR, f"step-{self.step:07d}")
        branch = storage.join(d, "branch")
        if storage.is_remote(d):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_branch(tmp, extra={"step": self.step})
                for name in ("refdsr_branch.safetensors", "refdsr_branch.json"):
                    storage.write_bytes(storage.join(branch, name), open(f"{tmp}/{name}", "rb").read())
        else:
            self.model.save_branch(branch, extra={"step": self.step})
        optim = {"opt": self.opt.state_dict(), "scaler": self.scaler.state_dict()}
        if self.opt_d:
            optim["opt_d"] = self.opt_d.state_dict()
            optim["heads"] = {k: v for k, v in self.loss.state_dict().items() if "head" in k}
        _save_tensors(storage.join(d, "optim.pt"), optim)
        state = {"step": self.step, "config": asdict(self.cfg), "losses": self.loss.config(),
                 "history": self.history, "saved_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        storage.write_json(storage.join(d, "state.json"), state)
        storage.write_json(_latest_uri(self.cfg.out), {"step": self.step, "dir": d, "branch": branch})
        return d

    def resume(self) -> bool:
        """Continue from the latest checkpoint under <out>, if any."""
        rec = latest_checkpoint(self.cfg.out)
        if rec is None:
            return False
        from rasr.restoration.generators.refdsr import read_branch

        _, tensors = read_branch(rec["branch"])
        self.model.load_branch_tensors({k: v.to(self.device) for k, v in tensors.items()})
        optim = _load_tensors(storage.join(rec["dir"], "optim.pt"))
        self.opt.load_state_dict(optim["opt"])
        self.scaler.load_state_dict(optim["scaler"])
        if self.opt_d and "opt_d" in optim:
            self.opt_d.load_state_dict(optim["opt_d"])
            self.loss.load_state_dict(optim["heads"], strict=False)
        state = storage.read_json(storage.join(rec["dir"], "state.json"))
        self.step, self.history = state["step"], state["history"]
        log.info(f"resumed from step {self.step} ({storage.redact(rec['dir'])})")
        return True

    def run(self, until: int | None = None, on_step=None) -> list[dict]:
        """Train to `until` (default cfg.steps), checkpointing every N steps and at the end."""
        until = min(until or self.cfg.steps, self.cfg.steps)
        t0 = time.perf_counter()
        while self.step < until:
            parts = self.train_step(self.step)
            self.step += 1
            self.history.append({"step": self.step, **{k: round(v, 6) for k, v in parts.items()}})
            if on_step:
                on_step(self.step, parts)
            if self.step % self.cfg.log_every == 0:
                log.info(f"step {self.step}/{self.cfg.steps} loss {parts['total']:.4f} "
                         f"({(time.perf_counter() - t0) / max(1, self.step):.2f} s/step)")
            if self.rank == 0 and (self.step % self.cfg.checkpoint_every == 0 or self.step == until):
                self.save()
        return self.history
