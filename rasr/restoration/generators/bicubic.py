"""Bicubic upscaling: the reference point every learned generator must beat."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rasr.restoration.generators.base import Generator


class Bicubic(Generator):
    name = "bicubic"
    weights_id = "none"

    def __init__(self, scale: int = 4, device: str | None = None):
        self.scale = scale
        self.device = torch.device(device or "cpu")

    def restore(self, lr: torch.Tensor, ref: torch.Tensor | None = None, prompts=None) -> torch.Tensor:
        h, w = lr.shape[-2:]
        return F.interpolate(lr, size=(h * self.scale, w * self.scale), mode="bicubic",
                             align_corners=False).clamp(0, 1)
