"""RRDBNet, the generator of ESRGAN / Real-ESRGAN x4plus (16.7M parameters at the defaults).

Module names follow the official BasicSR/Real-ESRGAN state dicts (`conv_first`, `body.{i}.rdb{1,2,3}.
conv{1..5}`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`), so their `.pth` loads as is.
Defaults are RealESRGAN_x4plus; the x4plus anime model is the same with num_block=6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, 1, 1)


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the input and every earlier output (dense concatenation)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        f, g = num_feat, num_grow_ch
        self.conv1 = _conv(f, g)
        self.conv2 = _conv(f + g, g)
        self.conv3 = _conv(f + 2 * g, g)
        self.conv4 = _conv(f + 3 * g, g)
        self.conv5 = _conv(f + 4 * g, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]                                   # (B, F, H, W)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))  # + (B, G, H, W) each
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x  # residual scaled down: keeps deep training stable


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks and a scaled skip."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """x4 super-resolution: (B, 3, h, w) in [0, 1] -> (B, 3, 4h, 4w), roughly [0, 1] (not clamped)."""

    scale = 4

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32):
        super().__init__()
        self.conv_first = _conv(num_in_ch, num_feat)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = _conv(num_feat, num_feat)
        self.conv_up1 = _conv(num_feat, num_feat)
        self.conv_up2 = _conv(num_feat, num_feat)
        self.conv_hr = _conv(num_feat, num_feat)
        self.conv_last = _conv(num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)                         # (B, F, h, w)
        feat = feat + self.conv_body(self.body(feat))     # trunk, (B, F, h, w)
        for conv in (self.conv_up1, self.conv_up2):       # nearest x2 then conv: (B, F, 2h, 2w), (B, F, 4h, 4w)
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))  # (B, C_out, 4h, 4w)


def activation_slope(name: str) -> float | None:
    """LeakyReLU slope that follows the conv of this name in RRDBNet, None if no activation."""
    if name.endswith(("conv1", "conv2", "conv3", "conv4")) or name in ("conv_up1", "conv_up2", "conv_hr"):
        return 0.2
    return None
