"""JPEG compression round trip in torch: what libjpeg (and so PIL) does to an image, batched.

RGB -> YCbCr (JFIF), 4:2:0 chroma subsampling, 8x8 DCT, quantisation with the IJG tables scaled by
quality exactly as libjpeg scales them, rounding, dequantisation, inverse DCT, "fancy" (triangle)
chroma upsampling, back to RGB. Each image in the batch has its own quality. Rounding uses a
straight-through estimator, so gradients flow (as identity) through the quantisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# IJG example tables (JPEG standard, Annex K), row-major; libjpeg scales these by quality.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

# JFIF RGB -> YCbCr (before the +128 offset of the chroma planes)
_RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCC_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


def quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) integer qualities in [1, 100] -> luma and chroma tables, each (B, 8, 8) float."""
    q = quality.to(torch.int64).clamp(1, 100)[:, None, None]
    # libjpeg's jpeg_quality_scaling + jpeg_add_quant_table with force_baseline (integer maths)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = torch.tensor(base, dtype=torch.int64, device=quality.device)
        tables.append(((t * scale + 50) // 100).clamp(1, 255).float())
    return tables[0], tables[1]


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 255] -> YCbCr in [0, 255] (JFIF, chroma centred on 128)."""
    m = torch.tensor(_RGB_TO_YCC, dtype=x.dtype, device=x.device)[:, :, None, None]
    offset = torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)
    return F.conv2d(x, m, bias=offset)  # a 1x1 conv: the 3x3 colour matrix at every pixel


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) YCbCr in [0, 255] -> RGB in [0, 255] (not clamped)."""
    m = torch.tensor(_YCC_TO_RGB, dtype=x.dtype, device=x.device)[:, :, None, None]
    offset = torch.tensor([0.0, 128.0, 128.0], dtype=x.dtype, device=x.device)
    return F.conv2d(x - offset[:, None, None], m)


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # orthonormal DCT-II: JPEG's 2D DCT with its C(u)C(v)/4 factors is exactly D @ block @ D.T
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(dtype=dtype, device=device)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    # forward: exact rounding; backward: identity (straight-through), so the round trip has gradients
    return x + (torch.round(x) - x).detach() if x.requires_grad else torch.round(x)


def _quantise_blocks(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) level-shifted planes, H and W multiples of 8; table (B, 8, 8) -> same shape."""
    B, C, H, W = planes.shape
    d = _dct_matrix(planes.dtype, planes.device)
    blocks = planes.reshape(B, C, H // 8, 8, W // 8, 8).transpose(3, 4)  # (B, C, H/8, W/8, 8, 8)
    q = table.to(planes.dtype)[:, None, None, None]                      # (B, 1, 1, 1, 8, 8)
    coef = _round_ste(d @ blocks @ d.T / q) * q
    blocks = d.T @ coef @ d
    return blocks.transpose(3, 4).reshape(B, C, H, W)


def jpeg(x: torch.Tensor, quality: torch.Tensor | list[int]) -> torch.Tensor:
    """JPEG-compress and decode (B, 3, H, W) RGB in [0, 1], one quality per image; returns [0, 1]."""
    B, _, H, W = x.shape
    quality = torch.as_tensor(quality, device=x.device).reshape(B)
    # libjpeg pads the image to whole MCUs (16x16 at 4:2:0) by repeating the edge pixels
    ph, pw = (-H) % 16, (-W) % 16
    x = F.pad(x.clamp(0, 1), (0, pw, 0, ph), mode="replicate") * 255
    ycc = rgb_to_ycbcr(x)
    luma, chroma = ycc[:, :1], F.avg_pool2d(ycc[:, 1:], 2)  # 4:2:0: chroma is 2x2 block means
    qy, qc = quant_tables(quality)
    # the decoder range-limits each component to [0, 255] right after the inverse DCT
    luma = (_quantise_blocks(luma - 128, qy) + 128).clamp(0, 255)
    chroma = (_quantise_blocks(chroma - 128, qc) + 128).clamp(0, 255)
    # libjpeg's fancy upsampling is a 3/4, 1/4 triangle filter: bilinear x2 with half-pixel centres
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    rgb = ycbcr_to_rgb(torch.cat([luma, chroma], dim=1))
    return (rgb[..., :H, :W] / 255).clamp(0, 1)
