"""Colour correction of a restored image towards its low-resolution input (as in StableSR/OSEDiff).

adain: match each channel's mean and std to the upsampled LR.
wavelet: keep the output's high frequencies, take the low frequencies from the upsampled LR.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

COLOR_FIXES = ("none", "adain", "wavelet")


def adain(out: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> same shape; per-channel mean/std of `out` set to those of `ref`."""
    m_o, s_o = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True) + eps
    m_r, s_r = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True) + eps
    return (out - m_o) / s_o * s_r + m_r


def _blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    # 3x3 binomial kernel dilated by `radius`: one level of an a-trous wavelet decomposition
    import torch  # here, not at the top: checking a colour-fix name must not cost a torch import
    import torch.nn.functional as F

    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16.0
    k = k.view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
    mode = "reflect" if radius < min(x.shape[-2:]) else "replicate"  # reflect needs pad < size
    x = F.pad(x, (radius,) * 4, mode=mode)
    return F.conv2d(x, k, groups=x.shape[1], dilation=radius)


def wavelet_low(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Low-frequency part of x after `levels` a-trous wavelet levels."""
    low = x
    for i in range(levels):
        low = _blur(low, 2 ** i)
    return low


def wavelet(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of `out` plus low frequencies of `ref`."""
    return out - wavelet_low(out, levels) + wavelet_low(ref, levels)


def apply(out: torch.Tensor, lr_up: torch.Tensor, method: str) -> torch.Tensor:
    """Colour-correct `out` (B, 3, H, W, [0, 1]) towards `lr_up` (the LR resized to H, W)."""
    if method == "none":
        return out
    if method == "adain":
        return adain(out, lr_up).clamp(0, 1)
    if method == "wavelet":
        return wavelet(out, lr_up).clamp(0, 1)
    raise ValueError(f"unknown colour fix {method!r}: choose one of {', '.join(COLOR_FIXES)}")
