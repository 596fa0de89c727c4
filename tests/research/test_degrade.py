"""Real-ESRGAN degradation pipeline (rasr.research.degrade) and the torch JPEG round trip (rasr.restoration.jpeg).

Stage tests force one stage through config overrides on a "quiet" config (every other stage close
to identity, scale 1 unless the stage needs 4) and compare the output with the same op rebuilt from
the recorded params, so they check both the effect and that params describe what was done.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rasr.research import degrade as D
from rasr.restoration.jpeg import jpeg, quant_tables, rgb_to_ycbcr


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255


def crop(img: np.ndarray, h: int, w: int | None = None) -> np.ndarray:
    w = w or h
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[y : y + h, x : x + w]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255) / 255


def luma(x: torch.Tensor) -> torch.Tensor:
    return rgb_to_ycbcr(x * 255)[:, 0] / 255  # (B, H, W)


def hf_energy(x: torch.Tensor) -> float:
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=x.dtype)[None, None]
    return float(F.conv2d(luma(x)[:, None], lap).pow(2).mean())


def quantised_fraction(x: torch.Tensor, quality: int) -> float:
    """Share of the non-zero luma DCT coefficients (8x8 grid) that sit on multiples of the JPEG step."""
    B, _, H, W = x.shape
    y = luma(x)[:, : H // 8 * 8, : W // 8 * 8] * 255 - 128
    n = torch.arange(8.0)
    d = torch.cos((2 * n[None] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    blocks = y.reshape(B, H // 8, 8, W // 8, 8).transpose(2, 3)
    c = (d @ blocks @ d.T) / quant_tables(torch.tensor([quality]))[0]
    c = c[c.abs() > 0.5]  # zeros are common in any image; the steps show in the others
    return float(((c - c.round()).abs() < 0.15).float().mean())


def quiet(scale: int = 1, **overrides) -> D.DegradationConfig:
    """Every stage near identity: tiny Gaussian blur, keep size, zero noise, JPEG at quality 100."""
    blur = D.BlurConfig(kernel_types=("iso",), kernel_probs=(1.0,), sigma=(0.2, 0.2), sinc_prob=0.0)
    stage = D.StageConfig(blur=blur, resize_probs=(0, 0, 1), gaussian_prob=1.0, gaussian_sigma=(0, 0), gray_prob=0.0)
    cfg = D.DegradationConfig(
        scale=scale, first=stage, jpeg_range=(100, 100), second=replace(stage, blur_prob=0.0),
        final_jpeg_range=(100, 100), final_sinc_prob=0.0,
    )
    return replace(cfg, **overrides)


def first(cfg: D.DegradationConfig, blur: dict | None = None, **stage) -> D.DegradationConfig:
    """cfg with its first stage (and that stage's blur) overridden."""
    s = replace(cfg.first, **stage)
    if blur:
        s = replace(s, blur=replace(s.blur, **blur))
    return replace(cfg, first=s)


@pytest.fixture(scope="module")
def hr(chelsea) -> torch.Tensor:
    return as_tensor(crop(chelsea, 128))  # (1, 3, 128, 128)


@pytest.fixture(scope="module")
def base(hr) -> torch.Tensor:
    """hr through the quiet pipeline: the reference a single forced stage is measured against."""
    return D.degrade(hr, [0], quiet())[0]


@pytest.fixture(scope="module")
def batch(photos) -> torch.Tensor:
    names = ("chelsea", "astronaut", "coffee", "rocket")
    return torch.cat([as_tensor(crop(photos[n], 128)) for n in names])  # (4, 3, 128, 128)


# ---------------------------------------------------------------------------------------------
# kernels


@pytest.mark.parametrize("kind", D.KERNEL_TYPES)
def test_kernels_normalised(kind):
    for size in (7, 21):
        p = {"kind": kind, "size": size, "sigma_x": 2.0, "sigma_y": 0.7, "theta": 0.4, "beta": 1.5}
        k = D.make_kernel(p)
        assert k.shape == (size, size)
        assert k.sum() == pytest.approx(1.0) and (k >= 0).all()
        assert np.allclose(k, k[::-1, ::-1])  # point-symmetric: correlation == convolution
        assert k.argmax() == size * size // 2


def test_kernel_shapes():
    iso = D.gaussian_kernel(21, 2.0, 2.0)
    assert np.allclose(iso, iso.T) and np.allclose(iso, iso[::-1])
    # wide along x (columns) at theta=0; a quarter turn makes it wide along y (rows)
    along_x = D.gaussian_kernel(21, 3.0, 0.7, 0.0)
    assert along_x[10, 13] > 10 * along_x[13, 10]
    assert np.allclose(D.gaussian_kernel(21, 3.0, 0.7, math.pi / 2), along_x.T)
    # generalized and plateau: beta < 1 gives heavier tails than a Gaussian, beta > 1 a flatter top
    rel = lambda k, i, j: k[i, j] / k[10, 10]
    g = D.gaussian_kernel(21, 2.0, 2.0)
    assert rel(D.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 0.5), 0, 10) > 100 * rel(g, 0, 10)
    flat = D.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 4.0)
    assert rel(flat, 10, 11) > 0.99 > rel(g, 10, 11) and flat[0, 10] < 1e-12
    assert rel(D.plateau_kernel(21, 2.0, 2.0, 0.0, 1.0), 0, 10) > 100 * rel(g, 0, 10)
    # sinc: a low-pass whose spectrum is ~flat below the cutoff and ~0 well above it
    s = D.sinc_kernel(21, math.pi / 3)
    assert s.sum() == pytest.approx(1.0) and s.min() < 0  # ringing lobes
    spec = np.abs(np.fft.fft2(s, (64, 64)))
    assert spec[0, 4] > 0.9 and spec[0, 24] < 0.1  # 4/64*2pi < pi/3 < 24/64*2pi


# ---------------------------------------------------------------------------------------------
# JPEG


@pytest.mark.parametrize("h, w", [(256, 256), (203, 250)])
@pytest.mark.parametrize("quality", [30, 60, 95])
def test_jpeg_matches_pil(chelsea, h, w, quality):
    img = crop(chelsea, h, w)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    pil = as_tensor(np.asarray(Image.open(buf).convert("RGB")))
    x = as_tensor(img)
    ours = to_8bit(jpeg(x, [quality]))
    print(f"q={quality} {h}x{w}: PSNR(ours, PIL) {psnr(ours, pil):.1f} dB, "
          f"vs original: ours {psnr(ours, x):.2f} dB, PIL {psnr(pil, x):.2f} dB")
    assert psnr(ours, pil) > 40  # measured 44-48 dB
    assert abs(psnr(ours, x) - psnr(pil, x)) < 0.5  # the same amount of damage


def test_jpeg_tables_batch_and_gradient(hr):
    qy, qc = quant_tables(torch.tensor([50, 100, 1]))
    assert qy[0, 0, 0] == 16 and qc[0, 7, 7] == 99  # quality 50 is the IJG table itself
    assert (qy[1] == 1).all() and (qc[1] == 1).all()
    assert qy[2].max() == 255  # baseline JPEG caps steps at 255
    # per-sample quality in one batch equals separate calls
    x = torch.cat([hr, hr.flip(-1)])
    both = jpeg(x, [20, 90])
    assert torch.equal(both[:1], jpeg(hr, [20])) and torch.equal(both[1:], jpeg(hr.flip(-1), [90]))
    assert psnr(both[:1], hr) < psnr(both[1:], hr.flip(-1))
    # straight-through rounding: gradients reach the input
    x = hr.clone().requires_grad_()
    jpeg(x, [50]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_jpeg_quantises_8x8_dct(hr):
    out = to_8bit(jpeg(hr, [30]))
    assert quantised_fraction(out, 30) > 0.85
    assert quantised_fraction(hr, 30) < 0.5


# ---------------------------------------------------------------------------------------------
# the pipeline


def test_deterministic_per_seed(batch):
    x = batch[:2]
    a, pa = D.degrade(x, [1, 2])
    b, pb = D.degrade(x, [1, 2])
    assert torch.equal(a, b) and pa == pb
    c, pc = D.degrade(x, [3, 4])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])
    assert pa[0] != pc[0] and pa[1] != pc[1]


def test_batch_equals_single_calls(batch):
    seeds = [11, 12, 13, 14]
    lr, params = D.degrade(batch, seeds)
    for i, s in enumerate(seeds):
        one, p = D.degrade(batch[i : i + 1], [s])
        assert torch.equal(one, lr[i : i + 1]) and p == [params[i]]


SIZES = [(128, 128, 4), (64, 96, 4), (136, 200, 4), (16, 16, 4), (128, 96, 2), (60, 84, 1)]


@pytest.mark.parametrize("h, w, scale", SIZES)
def test_output_size_and_levels(photos, h, w, scale):
    x = as_tensor(crop(photos["coffee"], h, w)).repeat(2, 1, 1, 1)
    lr, params = D.degrade(x, [5, 6], D.DegradationConfig(scale=scale))
    assert lr.shape == (2, 3, h // scale, w // scale)
    assert lr.min() >= 0 and lr.max() <= 1
    assert torch.equal(lr, to_8bit(lr))  # on 8-bit levels
    assert json.loads(json.dumps(params)) == params


def test_bad_inputs(hr):
    with pytest.raises(ValueError, match="130x128 is not divisible by scale 4"):
        D.degrade(torch.rand(1, 3, 130, 128), [0])
    with pytest.raises(ValueError, match="not divisible by scale 2"):
        D.degrade(hr[..., :127], [0], D.DegradationConfig(scale=2))
    with pytest.raises(ValueError, match="one seed per image"):
        D.degrade(hr, [0, 1])
    with pytest.raises(ValueError, match="float"):
        D.degrade((hr * 255).to(torch.uint8), [0])
    with pytest.raises(ValueError, match="kernel_probs"):
        D.DegradationConfig(first=D.StageConfig(blur=D.BlurConfig(kernel_probs=(0.5,) * 6)))


def test_default_config_is_x4plus():
    cfg = D.DegradationConfig()
    b1, b2 = cfg.first.blur, cfg.second.blur
    assert cfg.scale == 4 and cfg.max_kernel_size == 21
    assert b1.kernel_probs == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03) and b1.kernel_types == D.KERNEL_TYPES
    assert b1.sizes == (7, 9, 11, 13, 15, 17, 19, 21) and b1.sinc_prob == b2.sinc_prob == 0.1
    assert (b1.sigma, b1.betag, b1.betap) == ((0.2, 3), (0.5, 4), (1, 2))
    assert (b2.sigma, b2.betag, b2.betap) == ((0.2, 1.5), (0.5, 4), (1, 2))
    assert (cfg.first.resize_probs, cfg.first.resize_range) == ((0.2, 0.7, 0.1), (0.15, 1.5))
    assert (cfg.second.resize_probs, cfg.second.resize_range) == ((0.3, 0.4, 0.3), (0.3, 1.2))
    assert (cfg.first.gaussian_sigma, cfg.first.poisson_scale) == ((1, 30), (0.05, 3))
    assert (cfg.second.gaussian_sigma, cfg.second.poisson_scale) == ((1, 25), (0.05, 2.5))
    assert cfg.first.gaussian_prob == cfg.second.gaussian_prob == 0.5
    assert cfg.first.gray_prob == cfg.second.gray_prob == 0.4
    assert (cfg.first.blur_prob, cfg.second.blur_prob, cfg.final_sinc_prob) == (1.0, 0.8, 0.8)
    assert cfg.jpeg_range == cfg.final_jpeg_range == (30, 95)


def test_param_ranges_over_many_seeds():
    cfg, n, H = D.DegradationConfig(), 300, 256
    params = [D.sample_params(s, cfg, (H, H)) for s in range(n)]
    counts: Counter = Counter()

    def rate(event: str, p: float, total: int):
        # 4.5 binomial standard deviations: deterministic seeds, but no hair trigger either
        assert abs(counts[event] / total - p) < 4.5 * math.sqrt(p * (1 - p) / total) + 1e-9, event

    for p in params:
        for key, stage in (("blur1", cfg.first), ("blur2", cfg.second)):
            b = p[key]
            counts[f"{key}.applied"] += b["applied"]
            assert b["size"] in range(7, 22, 2)
            counts[f"{key}.{b['kind']}"] += 1
            if b["kind"] == "sinc":
                lo = math.pi / 3 if b["size"] < 13 else math.pi / 5
                assert lo <= b["omega_c"] <= math.pi
                continue
            assert stage.blur.sigma[0] <= b["sigma_x"] <= stage.blur.sigma[1]
            assert stage.blur.sigma[0] <= b["sigma_y"] <= stage.blur.sigma[1]
            assert -math.pi <= b["theta"] <= math.pi
            if b["kind"].endswith("_iso") or b["kind"] == "iso":
                assert b["sigma_x"] == b["sigma_y"] and b["theta"] == 0
            if b["kind"].startswith("generalized"):
                assert stage.blur.betag[0] <= b["beta"] <= stage.blur.betag[1]
            elif b["kind"].startswith("plateau"):
                assert stage.blur.betap[0] <= b["beta"] <= stage.blur.betap[1]
            else:
                assert b["beta"] is None
        for key, stage, base in (("1", cfg.first, H), ("2", cfg.second, H // 4)):
            r, nz = p[f"resize{key}"], p[f"noise{key}"]
            counts[f"resize{key}.{r['updown']}"] += 1
            lo, hi = {"up": (1, stage.resize_range[1]), "down": (stage.resize_range[0], 1), "keep": (1, 1)}[r["updown"]]
            assert lo <= r["factor"] <= hi and r["mode"] in D.RESIZE_MODES
            assert r["size"] == [int(base * r["factor"])] * 2
            counts[f"noise{key}.{nz['kind']}"] += 1
            counts[f"noise{key}.gray"] += nz["gray"]
            rng = stage.gaussian_sigma if nz["kind"] == "gaussian" else stage.poisson_scale
            assert rng[0] <= nz["sigma" if nz["kind"] == "gaussian" else "scale"] <= rng[1]
        f = p["final"]
        for q in (p["jpeg1"]["quality"], f["jpeg"]["quality"]):
            assert isinstance(q, int) and 30 <= q <= 95
        assert f["resize"]["size"] == [H // 4, H // 4] and f["resize"]["mode"] in D.RESIZE_MODES
        counts[f"final.{f['order']}"] += 1
        counts["final.sinc"] += f["sinc"]["applied"]
        if f["sinc"]["applied"]:
            assert f["sinc"]["size"] in range(7, 22, 2) and math.pi / 3 <= f["sinc"]["omega_c"] <= math.pi
        counts[f"mode.{p['resize1']['mode']}"] += 1

    rate("blur1.applied", 1.0, n)
    rate("blur2.applied", 0.8, n)
    for key in ("blur1", "blur2"):
        rate(f"{key}.sinc", 0.1, n)
        not_sinc = n - counts[f"{key}.sinc"]
        for kind, prob in zip(D.KERNEL_TYPES, cfg.first.blur.kernel_probs):
            rate(f"{key}.{kind}", prob, not_sinc)
    for key, probs in (("1", cfg.first.resize_probs), ("2", cfg.second.resize_probs)):
        for updown, prob in zip(("up", "down", "keep"), probs):
            rate(f"resize{key}.{updown}", prob, n)
        rate(f"noise{key}.gaussian", 0.5, n)
        rate(f"noise{key}.gray", 0.4, n)
    rate("final.resize_first", 0.5, n)
    rate("final.sinc", 0.8, n)
    for mode in D.RESIZE_MODES:
        rate(f"mode.{mode}", 1 / 3, n)
    assert len({p["jpeg1"]["quality"] for p in params}) > 40  # qualities spread over the range


# ---------------------------------------------------------------------------------------------
# every stage, forced


def test_quiet_config_is_near_identity(hr, base):
    assert base.shape == hr.shape and psnr(base, hr) > 40


@pytest.mark.parametrize("kind", D.KERNEL_TYPES + ("sinc",))
def test_blur_kinds(hr, base, kind):
    blur = {"sinc_prob": 1.0} if kind == "sinc" else {"kernel_types": (kind,), "kernel_probs": (1.0,), "sigma": (2.0, 3.0)}
    seeds = [7, 8]
    out, params = D.degrade(hr.repeat(2, 1, 1, 1), seeds, first(quiet(), blur=blur))
    for i, p in enumerate(params):
        assert p["blur1"]["kind"] == kind
        kernel = torch.as_tensor(D.make_kernel(p["blur1"]))[None].float()
        expected = D.filter2d(hr, kernel)
        assert psnr(out[i : i + 1], expected) > 38  # params describe the blur that was applied
        assert hf_energy(out[i : i + 1]) < (0.9 if kind == "sinc" else 0.5) * hf_energy(base)


@pytest.mark.parametrize("mode", D.RESIZE_MODES)
@pytest.mark.parametrize("updown", ["up", "down", "keep"])
def test_resize_modes(hr, mode, updown):
    probs = {"up": (1, 0, 0), "down": (0, 1, 0), "keep": (0, 0, 1)}[updown]
    cfg = replace(first(quiet(), resize_probs=probs, resize_range=(0.4, 1.5)), resize_modes=(mode,))
    out, [p] = D.degrade(hr, [3], cfg)
    r = p["resize1"]
    assert (r["updown"], r["mode"]) == (updown, mode) and p["final"]["resize"]["mode"] == mode
    assert r["size"] == [int(128 * r["factor"])] * 2
    assert {"up": r["factor"] > 1, "down": 0.4 <= r["factor"] < 1, "keep": r["factor"] == 1}[updown]
    # the intermediate size is what the recorded resize makes, then the final resize restores 128
    mid = D.resize(hr, r["size"], mode)
    assert mid.shape[-2:] == tuple(r["size"])
    assert out.shape == hr.shape and psnr(out, D.resize(mid, (128, 128), mode)) > 38
    if updown == "down" and r["factor"] < 0.8:
        assert hf_energy(out) < 0.8 * hf_energy(hr)


@pytest.mark.parametrize("gray", [False, True])
def test_gaussian_noise_level(hr, base, gray):
    sigma = 12.0
    cfg = first(quiet(), gaussian_sigma=(sigma, sigma), gray_prob=float(gray))
    x = hr.repeat(2, 1, 1, 1)
    out, params = D.degrade(x, [1, 2], cfg)
    assert all(p["noise1"] == {"kind": "gaussian", "sigma": sigma, "gray": gray} for p in params)
    n = out - base
    # JPEG's chroma subsampling smooths colour noise, but luma passes it at quality 100:
    # gray noise is all luma; colour noise contributes sqrt(0.299^2 + 0.587^2 + 0.114^2) of it
    expected = sigma / 255 * (1.0 if gray else math.sqrt(0.299**2 + 0.587**2 + 0.114**2))
    assert float(luma(n).std()) == pytest.approx(expected, rel=0.1)
    # gray noise is the same in every channel, so it has no chroma; colour noise keeps some
    chroma_std = float((rgb_to_ycbcr(n * 255)[:, 1:] - 128).std())  # in 8-bit levels
    assert chroma_std < 1 if gray else chroma_std > 1.4  # measured 0.6 (8-bit rounding) and 1.8
    assert not torch.equal(n[0], n[1])  # each seed its own noise


@pytest.mark.parametrize("gray", [False, True])
def test_poisson_noise_level(hr, base, gray):
    scale = 1.0
    cfg = first(quiet(), gaussian_prob=0.0, poisson_scale=(scale, scale), gray_prob=float(gray))
    out, [p] = D.degrade(hr, [4], cfg)
    assert p["noise1"] == {"kind": "poisson", "scale": scale, "gray": gray}
    # shot noise: variance = intensity / levels (256 for a photo); luma mixes the channels' noise
    w = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    expected_var = float(((hr * w).sum(1) if gray else (hr * w**2).sum(1)).mean()) / 256 * scale**2
    assert float(luma(out - base).var()) == pytest.approx(expected_var, rel=0.15)


def test_first_jpeg_quality(hr, base):
    out, [p] = D.degrade(hr, [0], quiet(jpeg_range=(30, 30)))
    assert p["jpeg1"]["quality"] == 30
    assert psnr(out, jpeg(hr, [30])) > 40
    assert quantised_fraction(out, 30) > 0.8
    assert quantised_fraction(base, 30) < 0.5


@pytest.mark.parametrize("order", ["resize_first", "jpeg_first"])
def test_final_stage_orders(photos, order):
    x = as_tensor(crop(photos["astronaut"], 256))
    cfg = quiet(
        scale=4, final_resize_first_prob=float(order == "resize_first"), final_sinc_prob=1.0,
        final_jpeg_range=(30, 30), resize_modes=("bilinear",),
        second=replace(quiet().second, resize_probs=(0, 1, 0), resize_range=(0.5, 0.8)),
    )
    out, [p] = D.degrade(x, [9], cfg)
    f = p["final"]
    assert f["order"] == order and f["sinc"]["applied"] and f["jpeg"]["quality"] == 30
    mid = D.resize(x, p["resize2"]["size"], "bilinear")  # first stage ~ identity
    sinc = torch.as_tensor(D.make_kernel(f["sinc"]))[None].float()
    if order == "resize_first":
        expected = jpeg(D.filter2d(D.resize(mid, (64, 64), "bilinear"), sinc), [30])
    else:
        expected = D.filter2d(D.resize(jpeg(mid, [30]), (64, 64), "bilinear"), sinc)
    assert out.shape == (1, 3, 64, 64) and psnr(out, expected) > 38
    # JPEG last leaves its quantisation on the LR's 8x8 grid; JPEG first has it resized away
    frac = quantised_fraction(out, 30)
    assert frac > 0.8 if order == "resize_first" else frac < 0.6


def test_second_blur_prob(hr):
    cfg = quiet(second=replace(quiet().second, blur_prob=1.0, blur=replace(quiet().second.blur, sigma=(1.5, 1.5))))
    out, [p] = D.degrade(hr, [0], cfg)
    assert p["blur2"]["applied"] and p["blur2"]["sigma_x"] == 1.5
    expected = D.filter2d(hr, torch.as_tensor(D.gaussian_kernel(p["blur2"]["size"], 1.5, 1.5))[None].float())
    assert psnr(out, expected) > 38
    _, [p] = D.degrade(hr, [0], quiet())
    assert not p["blur2"]["applied"]


# ---------------------------------------------------------------------------------------------
# GPU


@pytest.mark.gpu
def test_cuda(batch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, seeds = batch.cuda(), [21, 22, 23, 24]
    lr, params = D.degrade(x, seeds)
    again, params2 = D.degrade(x, seeds)
    assert lr.is_cuda and lr.shape == (4, 3, 32, 32) and torch.equal(lr, again) and params == params2
    assert params == D.degrade(batch, seeds)[1]  # params come from numpy: device-independent
    one, _ = D.degrade(x[1:2], seeds[1:2])
    assert torch.equal(one, lr[1:2])
    assert torch.equal(lr, to_8bit(lr))
    # without noise, CPU and GPU agree up to float rounding
    cfg = replace(D.DegradationConfig(), first=replace(D.StageConfig(), gaussian_prob=1.0, gaussian_sigma=(0, 0)),
                  second=replace(D.DegradationConfig().second, gaussian_prob=1.0, gaussian_sigma=(0, 0)))
    gpu, _ = D.degrade(x, seeds, cfg)
    cpu, _ = D.degrade(batch, seeds, cfg)
    assert (gpu.cpu() - cpu).abs().mean() < 1e-3
    assert (jpeg(x, [40] * 4).cpu() - jpeg(batch, [40] * 4)).abs().max() < 1e-3
