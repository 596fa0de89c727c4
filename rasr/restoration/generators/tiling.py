"""Tiling: run a model on overlapping windows of a large input and blend the outputs.

Two windows blend the overlaps: "ramp" (1 inside, linear ramps over the overlap at inner edges; the
Restorer's pixel tiles) and "gaussian" (sigma = size / 4, never zero; OSEDiff's latent tiles).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

WINDOWS = ("ramp", "gaussian")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering `length` with at least `overlap` shared; the last ends at `length`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def ramp(length: int, overlap: int, at_start: bool, at_end: bool, device) -> torch.Tensor:
    """1-D blending weight: linear ramps over the overlap at inner edges, 1 elsewhere."""
    w = torch.ones(length, device=device)
    if overlap > 0:
        up = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if not at_start:
            w[:overlap] = torch.minimum(w[:overlap], up)
        if not at_end:
            w[-overlap:] = torch.minimum(w[-overlap:], up.flip(0))
    return w


def gaussian_weights(h: int, w: int, device) -> torch.Tensor:
    """(h, w) blending weights, a gaussian with sigma = size / 4: smooth across any overlap, never zero."""
    def g(n):
        x = torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (n / 4)) ** 2)
    return g(h)[:, None] * g(w)[None, :]


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                scale: int = 1, window: str = "gaussian") -> torch.Tensor:
    """Run fn on overlapping (tile x tile) windows of x (B, C, H, W) and blend its outputs
    (B, C', scale * th, scale * tw) into (B, C', scale * H, scale * W), float32 on fn's device."""
    if window not in WINDOWS:
        raise ValueError(f"unknown tiling window {window!r}: choose one of {', '.join(WINDOWS)}")
    b, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    s = scale
    out = acc = None
    for y in tile_starts(h, th, overlap):
        for x0 in tile_starts(w, tw, overlap):
            o = fn(x[..., y:y + th, x0:x0 + tw]).float()  # (B, C', th * s, tw * s)
            if out is None:
                out = torch.zeros(b, o.shape[1], h * s, w * s, device=o.device)
                acc = torch.zeros(1, 1, h * s, w * s, device=o.device)
            if window == "gaussian":
                wgt = gaussian_weights(th * s, tw * s, o.device)
            else:
                wy = ramp(th * s, overlap * s, y == 0, y + th >= h, o.device)
                wx = ramp(tw * s, overlap * s, x0 == 0, x0 + tw >= w, o.device)
                wgt = wy[:, None] * wx[None, :]
            out[..., y * s:(y + th) * s, x0 * s:(x0 + tw) * s] += o * wgt
            acc[..., y * s:(y + th) * s, x0 * s:(x0 + tw) * s] += wgt
    return out / acc.clamp_min(1e-8)  # every pixel has a weight > 0: the clamp only guards the division
