"""bench/reproduce_osediff.py on tiny models: the code path GPU users run with real weights (issue 21).

The "upstream outputs" it compares with are made here by OSEDiff's own inference recipe written out
independently of rasr (test_osediff.py + OSEDiff_test.forward + adain_color_fix: PIL resize, peft adapters
unmerged, one UNet call at t=999, the scheduler's step, truncating ToPILImage), so the agreement it prints is
a real check that `rasr enhance --generator osediff` is that recipe.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_sd import upstream_osediff

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bench():
    spec = importlib.util.spec_from_file_location("reproduce_osediff", os.path.join(ROOT, "bench", "reproduce_osediff.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _to_pil(x: torch.Tensor) -> Image.Image:
    """torchvision's ToPILImage on a float (3, H, W) tensor: x * 255 truncated to bytes."""
    return Image.fromarray(x.mul(255).byte().permute(1, 2, 0).numpy())


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def upstream_test_script(lr: Image.Image, sd: str, pkl: str) -> Image.Image:
    """OSEDiff's test_osediff.py for one image (fp32, no RAM: prompt f"{''}, {''},", posterior mode)."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    unet, vae = upstream_osediff(sd, pkl)
    tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder")
    sched = DDPMScheduler.from_pretrained(sd, subfolder="scheduler")
    sched.set_timesteps(timesteps=[999])
    image = lr.resize((lr.width * 4, lr.height * 4))  # PIL's default resample: bicubic
    image = image.resize((image.width - image.width % 8, image.height - image.height % 8), Image.LANCZOS)
    prompt = f"{''}, {''},"
    with torch.no_grad():
        ids = tokenizer(prompt, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        text = text_encoder(ids)[0]
        lq = _tensor(image)[None] * 2 - 1
        z = vae.encode(lq).latent_dist.mode() * vae.config.scaling_factor  # upstream samples: see FAITHFULNESS.md
        eps = unet(z, 999, encoder_hidden_states=text).sample
        x0 = sched.step(eps, 999, z).prev_sample
        out = vae.decode(x0 / vae.config.scaling_factor).sample.clamp(-1, 1)
    target, source = _tensor(_to_pil(out[0] * 0.5 + 0.5)), _tensor(image)

    def mean_std(f):  # adain_color_fix's calc_mean_std
        v = f.view(3, -1)
        return v.mean(1).view(3, 1, 1), (v.var(1) + 1e-5).sqrt().view(3, 1, 1)

    (mt, st), (ms, ss) = mean_std(target), mean_std(source)
    return _to_pil(((target - mt) / st * ss + ms).clamp(0, 1))


def test_reproduce_osediff_on_tiny_models(tiny_diffusion, chelsea, tmp_path, monkeypatch, prefect_harness, ray_session):
    import ray

    # the enhance subprocess joins this session's Prefect API and Ray, as tests/flows/test_cli.py's do
    monkeypatch.setenv("PREFECT_API_URL", prefect_harness)
    monkeypatch.setenv("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    testset = tmp_path / "RealSR"
    for sub in ("test_LR", "test_HR", "upstream"):
        (testset / sub).mkdir(parents=True)
    crops = {"Canon_001": chelsea[:512, :512], "Nikon_002": chelsea[-512:, -512:]}
    for name, hr in crops.items():
        Image.fromarray(hr).save(testset / "test_HR" / f"{name}_HR.png")
        lr = Image.fromarray(hr).resize((128, 128), Image.BICUBIC)
        lr.save(testset / "test_LR" / f"{name}_LR4.png")
        upstream_test_script(lr, tiny_diffusion["base"], tiny_diffusion["osediff"]).save(
            testset / "upstream" / f"{name}_x1.png")
    result = _bench().main(["--sd-base", tiny_diffusion["base"], "--osediff", tiny_diffusion["osediff"],
                            "--testset", str(testset), "--upstream-outputs", str(testset / "upstream"),
                            "--precision", "fp32", "--out", str(tmp_path / "out")])
    assert result["images"] == 2 and result["published"]["psnr"] == 25.15
    assert 5 < result["psnr"] < 40 and 0 < result["ssim"] < 1 and result["niqe"] > 0
    assert result["lpips"] is None and "unavailable" in result["unavailable"]["lpips"]
    # rasr's output is upstream's, up to rounding (rasr rounds where torchvision truncates)
    assert result["agreement_psnr_min"] > 40, result
