"""Colour correction of a restored image towards its low-resolution input (as in StableSR/OSEDiff).

adain: match each channel's mean and std to the upsampled LR (std = sqrt(unbiased variance + eps), as
       OSEDiff's `adain_color_fix`).
wavelet: keep the output's high frequencies, take the low frequencies from the upsampled LR.
auto: each generator's own default (DEFAULTS). OSEDiff's inference script applies AdaIN by default, so
      `osediff` and `refdsr` get it. `realesrgan` gets wavelet by measurement (bench/color_fix.py, 20 bundled
      photos, Y channel): on the Real-ESRGAN degradation none 24.33 dB / adain 24.47 / wavelet 24.66 (SSIM
      0.5940 / 0.5918 / 0.5939); on clean bicubic LR 27.05 / 27.81 / 27.41 (SSIM 0.7616 / 0.7642 / 0.7622).
      Wavelet is the one fix that gains on both protocols without costing SSIM on the degraded one, the
      protocol closest to archive photos. `bicubic` gets none (its low frequencies are the LR's already).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rasr.options import COLOR_FIXES

if TYPE_CHECKING:
    import torch

DEFAULTS = {"osediff": "adain", "refdsr": "adain", "realesrgan": "wavelet", "bicubic": "none"}


def resolve(method: str, generator: str) -> str:
    """The colour fix that runs: `auto` becomes the generator's default (none for generators not listed)."""
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}: choose one of {', '.join(COLOR_FIXES)}")
    return DEFAULTS.get(generator, "none") if method == "auto" else method


def adain(out: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> same shape; per-channel mean/std of `out` set to those of `ref`."""
    m_o, s_o = out.mean((2, 3), keepdim=True), (out.var((2, 3), keepdim=True) + eps).sqrt()
    m_r, s_r = ref.mean((2, 3), keepdim=True), (ref.var((2, 3), keepdim=True) + eps).sqrt()
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
    if method == "auto":
        raise ValueError("colour fix 'auto' depends on the generator: resolve it first (colorfix.resolve)")
    if method == "adain":
        return adain(out, lr_up).clamp(0, 1)
    if method == "wavelet":
        return wavelet(out, lr_up).clamp(0, 1)
    raise ValueError(f"unknown colour fix {method!r}: choose one of {', '.join(COLOR_FIXES)}")
