"""Real-ESRGAN's second-order degradation (the x4plus recipe) in torch, seeded per sample.

HR -> [blur -> resize -> noise -> JPEG] -> [blur? -> resize -> noise] -> final stage -> LR, where the
final stage is, in random order, (resize to HR/scale + sinc? + JPEG) or (JPEG + resize + sinc?).
Every random choice is drawn from a numpy Generator seeded with the sample's seed and recorded in
a JSON-serialisable dict; noise pixels come from a torch Generator with the same seed. So a sample
depends only on its own seed: a batch gives the same result as its images one by one, on any device.

The samples of a batch go through each op together wherever they share a size and a choice (all of
the first blur, the final sinc and JPEG, and any samples whose resizes agree); the random resizes
make the middle of the pipeline mostly per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import j1

from rasr.restoration.jpeg import jpeg

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
ODD_SIZES = tuple(range(7, 22, 2))  # 7, 9, ..., 21


# --------------------------------------------------------------------------------------------
# config: the defaults are Real-ESRGAN's train_realesrnet_x4plus / train_realesrgan_x4plus set


@dataclass(frozen=True)
class BlurConfig:
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sizes: tuple[int, ...] = ODD_SIZES
    sigma: tuple[float, float] = (0.2, 3.0)
    betag: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape
    betap: tuple[float, float] = (1.0, 2.0)  # plateau shape
    sinc_prob: float = 0.1                   # a sinc (ringing) kernel instead of the above


@dataclass(frozen=True)
class StageConfig:
    blur_prob: float = 1.0
    blur: BlurConfig = field(default_factory=BlurConfig)
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_prob: float = 0.5                                  # else Poisson noise
    gaussian_sigma: tuple[float, float] = (1.0, 30.0)           # in 8-bit levels
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_prob: float = 0.4                                      # same noise in all channels


def _second_stage() -> StageConfig:
    return StageConfig(
        blur_prob=0.8,
        blur=BlurConfig(sigma=(0.2, 1.5)),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        gaussian_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


@dataclass(frozen=True)
class DegradationConfig:
    scale: int = 4
    first: StageConfig = field(default_factory=StageConfig)
    jpeg_range: tuple[int, int] = (30, 95)        # the first stage's JPEG
    second: StageConfig = field(default_factory=_second_stage)
    final_jpeg_range: tuple[int, int] = (30, 95)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: tuple[int, ...] = ODD_SIZES
    final_resize_first_prob: float = 0.5          # else JPEG first, then resize + sinc
    resize_modes: tuple[str, ...] = RESIZE_MODES  # chosen uniformly, for every resize

    def __post_init__(self):
        if not (isinstance(self.scale, int) and self.scale >= 1):
            raise ValueError(f"DegradationConfig.scale must be a positive int, got {self.scale!r}")
        for name, blur in (("first", self.first.blur), ("second", self.second.blur)):
            if set(blur.kernel_types) - set(KERNEL_TYPES) or len(blur.kernel_probs) != len(blur.kernel_types):
                raise ValueError(f"{name}.blur: kernel_types must be among {KERNEL_TYPES}, one prob each")
            if not math.isclose(sum(blur.kernel_probs), 1.0):
                raise ValueError(f"{name}.blur.kernel_probs must sum to 1, got {blur.kernel_probs}")
        sizes = self.first.blur.sizes + self.second.blur.sizes + self.final_sinc_sizes
        if any(k % 2 == 0 or k < 1 for k in sizes):
            raise ValueError(f"kernel sizes must be positive and odd, got {sorted(set(sizes))}")
        if set(self.resize_modes) - set(RESIZE_MODES) or not self.resize_modes:
            raise ValueError(f"resize_modes must be a non-empty subset of {RESIZE_MODES}")

    @property
    def max_kernel_size(self) -> int:
        # every kernel is zero-padded to this so a batch shares one grouped conv (Real-ESRGAN: 21)
        return max(self.first.blur.sizes + self.second.blur.sizes + self.final_sinc_sizes)


# --------------------------------------------------------------------------------------------
# kernels (numpy float64, (k, k), sum 1). x runs along columns, y along rows, theta from x to y.


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(r, r)  # xx, yy: (k, k)


def _mahalanobis2(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    # squared distance under the covariance R(theta) diag(sx^2, sy^2) R(theta)^T
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy  # coordinates along the kernel's own axes
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> np.ndarray:
    """Bivariate (possibly anisotropic, rotated) Gaussian kernel, (size, size), sum 1."""
    k = np.exp(-0.5 * _mahalanobis2(size, sigma_x, sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """exp(-0.5 d^(2 beta)): beta < 1 gives a sharper peak and heavier tails, beta > 1 a flat top."""
    k = np.exp(-0.5 * _mahalanobis2(size, sigma_x, sigma_y, theta) ** beta)
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + d^(2 beta)): a plateau-shaped kernel with polynomial tails, sum 1."""
    k = 1.0 / (_mahalanobis2(size, sigma_x, sigma_y, theta) ** beta + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2D sinc, jinc) kernel with cutoff omega_c in (0, pi], sum 1."""
    xx, yy = _grid(size)
    r = np.hypot(xx, yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    k[r == 0] = omega_c**2 / (4 * np.pi)  # the limit at r -> 0
    return k / k.sum()


def make_kernel(p: dict) -> np.ndarray:
    """The kernel a recorded blur/sinc parameter dict describes."""
    kind, size = p["kind"], p["size"]
    if kind == "sinc":
        return sinc_kernel(size, p["omega_c"])
    args = (size, p["sigma_x"], p["sigma_y"], p["theta"])
    if kind in ("iso", "aniso"):
        return gaussian_kernel(*args)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(*args, p["beta"])
    if kind.startswith("plateau"):
        return plateau_kernel(*args, p["beta"])
    raise ValueError(f"unknown kernel kind {kind!r}: choose from {KERNEL_TYPES + ('sinc',)}")


# --------------------------------------------------------------------------------------------
# parameter draws: everything random about one sample, as plain JSON types


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _sample_blur(rng: np.random.Generator, cfg: BlurConfig) -> dict:
    size = int(rng.choice(cfg.sizes))
    if rng.random() < cfg.sinc_prob:
        # small kernels cannot hold a low cutoff's wide ringing, hence the narrower range
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return {"kind": "sinc", "size": size, "omega_c": float(rng.uniform(lo, math.pi))}
    kind = cfg.kernel_types[int(rng.choice(len(cfg.kernel_types), p=cfg.kernel_probs))]
    iso = kind.split("_")[-1] == "iso"
    sigma_x = _uniform(rng, cfg.sigma)
    sigma_y = sigma_x if iso else _uniform(rng, cfg.sigma)
    theta = 0.0 if iso else float(rng.uniform(-math.pi, math.pi))
    beta = None
    if kind.startswith(("generalized", "plateau")):
        lo, hi = cfg.betag if kind.startswith("generalized") else cfg.betap
        # half the draws below 1 and half above, whatever the range's width on either side
        beta = float(rng.uniform(lo, 1.0)) if rng.random() < 0.5 else float(rng.uniform(1.0, hi))
    return {"kind": kind, "size": size, "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta, "beta": beta}


def _sample_resize(rng: np.random.Generator, stage: StageConfig, modes: tuple[str, ...], base: tuple[int, int]) -> dict:
    updown = ("up", "down", "keep")[int(rng.choice(3, p=stage.resize_probs))]
    lo, hi = stage.resize_range
    factor = {"up": (1.0, hi), "down": (lo, 1.0)}.get(updown)
    factor = float(rng.uniform(*factor)) if factor else 1.0
    mode = str(rng.choice(modes))
    size = [max(1, int(base[0] * factor)), max(1, int(base[1] * factor))]
    return {"updown": updown, "factor": factor, "mode": mode, "size": size}


def _sample_noise(rng: np.random.Generator, stage: StageConfig) -> dict:
    if rng.random() < stage.gaussian_prob:
        p = {"kind": "gaussian", "sigma": _uniform(rng, stage.gaussian_sigma)}
    else:
        p = {"kind": "poisson", "scale": _uniform(rng, stage.poisson_scale)}
    p["gray"] = bool(rng.random() < stage.gray_prob)
    return p


def _sample_quality(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1], endpoint=True))


def sample_params(seed: int, cfg: DegradationConfig, hr_size: tuple[int, int]) -> dict:
    """Every random choice of one sample's degradation, drawn from `seed` (JSON-serialisable)."""
    rng = np.random.default_rng(seed)
    H, W = hr_size
    lr = (H // cfg.scale, W // cfg.scale)
    p: dict = {"seed": int(seed), "scale": cfg.scale}
    p["blur1"] = {"applied": bool(rng.random() < cfg.first.blur_prob), **_sample_blur(rng, cfg.first.blur)}
    p["resize1"] = _sample_resize(rng, cfg.first, cfg.resize_modes, (H, W))
    p["noise1"] = _sample_noise(rng, cfg.first)
    p["jpeg1"] = {"quality": _sample_quality(rng, cfg.jpeg_range)}
    p["blur2"] = {"applied": bool(rng.random() < cfg.second.blur_prob), **_sample_blur(rng, cfg.second.blur)}
    # the second resize is relative to the LR size, so the final resize is a modest one
    p["resize2"] = _sample_resize(rng, cfg.second, cfg.resize_modes, lr)
    p["noise2"] = _sample_noise(rng, cfg.second)
    first = rng.random() < cfg.final_resize_first_prob
    sinc: dict = {"applied": bool(rng.random() < cfg.final_sinc_prob)}
    if sinc["applied"]:
        size = int(rng.choice(cfg.final_sinc_sizes))
        sinc.update(kind="sinc", size=size, omega_c=float(rng.uniform(math.pi / 3, math.pi)))
    p["final"] = {
        "order": "resize_first" if first else "jpeg_first",
        "resize": {"mode": str(rng.choice(cfg.resize_modes)), "size": list(lr)},
        "sinc": sinc,
        "jpeg": {"quality": _sample_quality(rng, cfg.final_jpeg_range)},
    }
    return p


# --------------------------------------------------------------------------------------------
# ops on batches


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) filtered by one (k, k) kernel per image, kernels (B, k, k); reflect-padded."""
    B, C, H, W = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    # reflect needs pad < size; tiny intermediates (strong downscales of small crops) replicate
    mode = "reflect" if pad < min(H, W) else "replicate"
    x = F.pad(x, (pad, pad, pad, pad), mode=mode).reshape(1, B * C, H + 2 * pad, W + 2 * pad)
    weight = kernels.to(x.dtype).repeat_interleave(C, dim=0)[:, None]  # (B*C, 1, k, k)
    # kernels are point-symmetric, so conv2d's correlation is the convolution
    return F.conv2d(x, weight, groups=B * C).reshape(B, C, H, W)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize without antialiasing, as Real-ESRGAN does: downscales alias, which is the point."""
    align = None if mode == "area" else False
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align)


def noise(x: torch.Tensor, p: dict, gen: torch.Generator) -> torch.Tensor:
    """Additive noise for one image (1, 3, h, w) in [0, 1] as recorded in `p`, drawn from `gen`."""
    _, _, h, w = x.shape
    channels = 1 if p["gray"] else 3
    if p["kind"] == "gaussian":
        n = torch.randn((1, channels, h, w), generator=gen, device=x.device, dtype=x.dtype)
        return n * (p["sigma"] / 255)
    # Poisson (shot) noise on the 8-bit image: photon counts scale with how many levels it uses
    img = (x * 255).round().clamp(0, 255) / 255
    levels = 2 ** math.ceil(math.log2(len(torch.unique(img))))
    if p["gray"]:
        img = (img * img.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    n = torch.poisson(img * levels, generator=gen) / levels - img
    return n * p["scale"]


# --------------------------------------------------------------------------------------------
# stages: each takes the samples as a list of (1, 3, h, w) and one param dict per sample (None
# skips the sample) and runs samples that share a size and a grouping key as one batch


def _grouped(xs: list[torch.Tensor], ps: list[dict | None], key: Callable[[dict], object], fn) -> list[torch.Tensor]:
    groups: dict = {}
    for i, (x, p) in enumerate(zip(xs, ps)):
        if p is not None:
            groups.setdefault((tuple(x.shape), key(p)), []).append(i)
    out = list(xs)
    for idx in groups.values():
        x = xs[idx[0]] if len(idx) == 1 else torch.cat([xs[i] for i in idx])
        y = fn(x, [ps[i] for i in idx], idx)
        for j, i in enumerate(idx):
            out[i] = y[j : j + 1]
    return out


def _blur(xs, ps, K: int):
    def run(x, group, _):
        kernels = [np.pad(make_kernel(p), (K - p["size"]) // 2) for p in group]  # each (K, K)
        return filter2d(x, torch.as_tensor(np.stack(kernels), dtype=x.dtype, device=x.device))

    return _grouped(xs, ps, lambda p: None, run)


def _resize(xs, ps):
    def run(x, group, _):
        return resize(x, group[0]["size"], group[0]["mode"])

    return _grouped(xs, ps, lambda p: (p["mode"], tuple(p["size"])), run)


def _noise(xs, ps, gens):
    def run(x, group, idx):
        n = torch.cat([noise(x[j : j + 1], p, gens[i]) for j, (p, i) in enumerate(zip(group, idx))])
        return (x + n).clamp(0, 1)  # n is (b, 1 or 3, h, w): gray noise broadcasts over channels

    # gray and colour noise differ in shape, so they are separate groups
    return _grouped(xs, ps, lambda p: p["gray"], run)


def _jpeg(xs, ps):
    return _grouped(xs, ps, lambda p: None, lambda x, g, _: jpeg(x, [p["quality"] for p in g]))


def _if_applied(ps: list[dict | None]) -> list[dict | None]:
    return [p if p is not None and p["applied"] else None for p in ps]


def _final_stage(xs, finals, K: int):
    # resize back to the LR size, sinc (ringing) and JPEG, in one of two orders per sample
    orders = {"resize_first": ("resize", "sinc", "jpeg"), "jpeg_first": ("jpeg", "resize", "sinc")}
    for order, steps in orders.items():
        mine = [f if f["order"] == order else None for f in finals]
        for step in steps:
            ps = [f and f[step] for f in mine]
            if step == "resize":
                xs = _resize(xs, ps)
            elif step == "sinc":
                xs = _blur(xs, _if_applied(ps), K)
            else:
                xs = _jpeg(xs, ps)
    return xs


def _check_inputs(hr: torch.Tensor, seeds: list[int], cfg: DegradationConfig) -> None:
    if hr.ndim != 4 or hr.shape[1] != 3 or not hr.is_floating_point():
        raise ValueError(f"hr must be a float (B, 3, H, W) tensor in [0, 1], got {hr.dtype} {tuple(hr.shape)}")
    B, _, H, W = hr.shape
    if len(seeds) != B:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {B}: pass one seed per image")
    if any(not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative ints, got {list(seeds)}")
    if H % cfg.scale or W % cfg.scale:
        raise ValueError(f"hr size {H}x{W} is not divisible by scale {cfg.scale}: crop it to a multiple of {cfg.scale}")


def degrade(
    hr: torch.Tensor, seeds: list[int], cfg: DegradationConfig = DegradationConfig()
) -> tuple[torch.Tensor, list[dict]]:
    """(B, 3, H, W) HR in [0, 1] -> (B, 3, H/scale, W/scale) LR on 8-bit levels, plus each sample's params."""
    _check_inputs(hr, seeds, cfg)
    B, _, H, W = hr.shape
    params = [sample_params(int(s), cfg, (H, W)) for s in seeds]
    gens = [torch.Generator(device=hr.device).manual_seed(int(s)) for s in seeds]
    K = cfg.max_kernel_size
    col = lambda stage: [p[stage] for p in params]

    xs = list(hr.split(1))
    # first degradation
    xs = _blur(xs, _if_applied(col("blur1")), K)
    xs = _resize(xs, col("resize1"))
    xs = _noise(xs, col("noise1"), gens)
    xs = _jpeg(xs, col("jpeg1"))
    # second degradation
    xs = _blur(xs, _if_applied(col("blur2")), K)
    xs = _resize(xs, col("resize2"))
    xs = _noise(xs, col("noise2"), gens)
    xs = _final_stage(xs, col("final"), K)
    lr = torch.cat(xs)  # (B, 3, H/scale, W/scale)
    return (lr * 255).round().clamp(0, 255) / 255, params
