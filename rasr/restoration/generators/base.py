"""The generator interface and the caller-facing wrapper that every generator shares.

A generator implements only

    restore(lr, ref, prompts) -> hr   lr: (B, 3, h, w) in [0, 1]; ref: (B, 3, H', W') in [0, 1] or None
                                      prompts: B text prompts or None (text-conditioned models only)
                                      hr: (B, 3, h * scale, w * scale) in [0, 1]

on inputs whose sides are multiples of `pad_multiple`. `Restorer` does the rest for any image:
padding so odd sizes come out at exactly scale x input, tiling with blended overlaps for large
inputs, batching of same-size inputs, dtype/device, and the colour fix.
"""

from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rasr.catalog import chunks
from rasr.restoration import colorfix
from rasr.restoration.generators.tiling import tiled_apply
from rasr.restoration.images import resize_pil, to_tensor, to_uint8, to_uint16


class Generator(abc.ABC):
    """Base class of all generators (not an nn.Module itself: models live in attributes)."""

    name: str = ""
    scale: int = 4
    uses_reference: bool = False
    pad_multiple: int = 1      # input sides must be multiples of this
    tiles_internally: bool = False  # the model tiles large inputs itself (latent + VAE tiling)
    min_side: int = 0          # inputs with a shorter side are enlarged to it first, then the output scaled back
    weights_id: str = "none"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @abc.abstractmethod
    def restore(self, lr: torch.Tensor, ref: torch.Tensor | None,
                prompts: list[str] | None = None) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] (+ references, prompts) -> (B, 3, h * scale, w * scale) in [0, 1]."""

    def info(self) -> dict:
        """Extra facts recorded in each manifest row (fusion scale, tagger, precision...)."""
        return {}


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right (reflect where possible) so both sides are multiples; returns (x, pad_h, pad_w)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, 0, 0
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), ph, pw


class Restorer:
    """Runs a generator on images of any size: pad, tile, batch, colour-fix, crop to exact size."""

    def __init__(self, generator: Generator, tile: int = 256, overlap: int = 32, color_fix: str = "auto",
                 batch_size: int = 4):
        color_fix = colorfix.resolve(color_fix, generator.name)  # "auto": the generator's own default
        if tile and overlap * 2 >= tile:
            raise ValueError(f"tile overlap {overlap} must be under half the tile size {tile}")
        self.g = generator
        self.tile = 0 if generator.tiles_internally else tile
        self.overlap = overlap
        self.color_fix = color_fix
        self.batch_size = max(1, batch_size)

    @property
    def scale(self) -> int:
        return self.g.scale

    def config(self) -> dict:
        """What changes the output: part of the pipeline's config hash."""
        return {"generator": self.g.name, "weights_id": self.g.weights_id, "scale": self.g.scale,
                "tile": self.tile, "overlap": self.overlap, "color_fix": self.color_fix, **self.g.info()}

    @torch.inference_mode()
    def restore(self, lrs: Sequence[np.ndarray], refs: Sequence[np.ndarray | None] | None = None,
                prompts: Sequence[str] | None = None) -> list[np.ndarray]:
        """Restore (H, W, 3) uint8 or uint16 images (each comes back at its own depth); refs (one per image, or
        None) feed reference-based models, prompts (one per image) text-conditioned ones."""
        refs = list(refs) if refs is not None else [None] * len(lrs)
        prompts = list(prompts) if prompts is not None else [""] * len(lrs)
        if len(refs) != len(lrs) or len(prompts) != len(lrs):
            raise ValueError(f"{len(lrs)} images but {len(refs)} references and {len(prompts)} prompts")
        out: list[np.ndarray | None] = [None] * len(lrs)
        # batch images of identical size (and reference presence); large ones go through tiling alone
        groups: dict[tuple, list[int]] = {}
        for i, (lr, ref) in enumerate(zip(lrs, refs)):
            big = self.tile and (lr.shape[0] > self.tile or lr.shape[1] > self.tile)
            key = ("tile", i) if big else (lr.shape[:2], ref is not None and self.g.uses_reference,
                                            None if ref is None else ref.shape[:2])
            groups.setdefault(key, []).append(i)
        for key, idx in groups.items():
            for chunk in chunks(idx, self.batch_size):
                lr = torch.cat([to_tensor(lrs[i]) for i in chunk])
                ref = None
                if self.g.uses_reference and refs[chunk[0]] is not None:
                    ref = torch.cat([to_tensor(refs[i]) for i in chunk])
                texts = [prompts[i] for i in chunk]
                hr = self._restore_tiled(lr, ref, texts) if key[0] == "tile" else self._restore_padded(lr, ref, texts)
                hr = self._fix_colour(hr, lr)
                for j, i in enumerate(chunk):  # as deep as the input: 16-bit pixels come back 16-bit
                    out[i] = to_uint16(hr[j]) if lrs[i].dtype == np.uint16 else to_uint8(hr[j])
        return out  # type: ignore[return-value]

    def _run(self, lr: torch.Tensor, ref: torch.Tensor | None, prompts: list[str]) -> torch.Tensor:
        lr = lr.to(self.g.device)
        ref = ref.to(self.g.device) if ref is not None else None
        return self.g.restore(lr, ref, prompts).float()

    def _restore_padded(self, lr, ref, prompts):
        h, w = lr.shape[-2:]
        s = self.g.scale
        small = self.g.min_side and min(h, w) < self.g.min_side
        if small:  # as OSEDiff's test script: enlarge (PIL bicubic) so the shorter side is min_side
            k = self.g.min_side / min(h, w)
            lr = resize_pil(lr, (int(k * h), int(k * w)))
        eh, ew = lr.shape[-2:]
        x, _, _ = pad_to_multiple(lr, self.g.pad_multiple)
        hr = self._run(x, ref, prompts)[..., : eh * s, : ew * s]
        # upstream means to scale the output back (its resize result is discarded, a bug): we do, so the
        # output is always scale x the input
        return resize_pil(hr, (h * s, w * s)) if small else hr

    def _restore_tiled(self, lr, ref, prompts):
        """Tiles of `tile` LR pixels overlapping by `overlap`, blended with linear ramps."""
        return tiled_apply(lambda tile: self._restore_padded(tile, ref, prompts), lr, self.tile, self.overlap,
                           scale=self.g.scale, window="ramp")

    def _fix_colour(self, hr, lr):
        if self.color_fix == "none":
            return hr.clamp(0, 1)
        lr_up = resize_pil(lr, tuple(hr.shape[-2:])).to(hr.device)  # OSEDiff's colour source: the PIL-upscaled LR
        return colorfix.apply(hr, lr_up, self.color_fix)
