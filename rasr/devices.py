"""Device and precision choices, shared by encoders and generators."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'fp32' | 'fp16' | 'bf16' -> torch dtype; fp16 on CPU falls back to fp32 (CPU kernels lack it)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown precision {dtype!r}: choose one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        return torch.float32
    return DTYPES[dtype]
