"""`osediff` and `refdsr` against upstream, each expected value built without rasr's model code (issue 21).

The lesson of the adapter bug: a test that compares rasr with rasr passes when both are wrong. Here the reference
side is built from upstream's recipe with diffusers, peft, PIL and torchvision directly (tests/tiny_sd.py
`upstream_osediff`, `add_upstream_adapters`), or computed by hand; docs/FAITHFULNESS.md maps each step to upstream.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from rasr.restoration import colorfix
from rasr.restoration.generators import Restorer, load_generator
from rasr.restoration.generators import sd as sdlib
from rasr.restoration.generators.diffusion import DiffusionGenerator
from rasr.restoration.generators.osediff import (KEYS_MANIFEST, TIMESTEP, apply_osediff, check_keys, inactive_adapters,
                                                  lora_layers, read_osediff)
from rasr.restoration.generators.refdsr import BRANCH_FILE, BRANCH_META, read_branch
from rasr.restoration.tagger import RamTagger, osediff_prompt
from tests.tiny_sd import full_size_meta, upstream_osediff, upstream_pkl_shapes

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def upstream(tiny_diffusion):
    """OSEDiff_test's UNet and VAE for the tiny weights (peft adapters, unmerged, all three active)."""
    return upstream_osediff(tiny_diffusion["base"], tiny_diffusion["osediff"])


@pytest.fixture(scope="module")
def gens(tiny_diffusion):
    kw = dict(weights=tiny_diffusion["base"], osediff_weights=tiny_diffusion["osediff"])
    return {"osediff": load_generator("osediff", **kw),
            "refdsr": load_generator("refdsr", refdsr_weights=tiny_diffusion["branch"], **kw)}


def _unet_and_latent(unet, vae, z, text, x):
    with torch.no_grad():
        return unet(z, TIMESTEP, encoder_hidden_states=text).sample, vae.encode(x).latent_dist.mode()


# ---- 1. every adapter acts ------------------------------------------------------------------------------------

def test_osediff_adapters_match_upstream_merged_and_unmerged(tiny_diffusion, upstream):
    w = read_osediff(tiny_diffusion["osediff"])
    z, text, x = randn(1, 4, 8, 8), randn(1, 77, 32, seed=1), rand(1, 3, 64, 64, seed=2) * 2 - 1
    ref_out, ref_lat = _unet_and_latent(*upstream, z, text, x)
    plain = sdlib.load(tiny_diffusion["base"])
    base_out, base_lat = _unet_and_latent(plain.unet, plain.vae, z, text, x)
    for merge in (False, True):
        c = sdlib.load(tiny_diffusion["base"])
        apply_osediff(c.unet, c.vae, w, merge=merge)
        if not merge:  # before merging, every LoRA layer runs every adapter it holds
            layers = lora_layers(c.unet) + lora_layers(c.vae)
            assert layers and inactive_adapters(c.unet) == [] and inactive_adapters(c.vae) == []
            held = {a for _, m in lora_layers(c.unet) for a in m.lora_A}
            assert held == {"default_encoder", "default_decoder", "default_others"}
        else:
            assert not any("lora" in n for n, _ in c.unet.named_parameters())
        out, lat = _unet_and_latent(c.unet, c.vae, z, text, x)
        assert (out - ref_out).abs().max() < 1e-4 and (lat - ref_lat).abs().max() < 1e-4, merge
    # the comparison can fail: the LoRA changes the model, and the old bug (only the adapter added last active)
    # is far from upstream
    assert (base_out - ref_out).abs().max() > 1e-2 and (base_lat - ref_lat).abs().max() > 1e-3
    buggy = copy.deepcopy(upstream[0])
    buggy.set_adapter("default_others")
    bug_out, _ = _unet_and_latent(buggy, upstream[1], z, text, x)
    assert (bug_out - ref_out).abs().max() > 1e-2


def test_merged_conv_in_includes_its_lora_delta(tiny_diffusion):
    raw = torch.load(tiny_diffusion["osediff"], weights_only=True)["state_dict_unet"]
    base_w = raw["conv_in.base_layer.weight"]                  # (C, 4, 3, 3), trained fully by OSEDiff
    a = raw["conv_in.lora_A.default_encoder.weight"]           # (r, 4, 3, 3)
    b = raw["conv_in.lora_B.default_encoder.weight"]           # (C, r, 1, 1)
    scaling = 8 / a.shape[0]                                    # peft's default lora_alpha 8 over rank
    expected = base_w + scaling * (b.flatten(1) @ a.flatten(1)).view_as(base_w)
    c = sdlib.load(tiny_diffusion["base"])
    apply_osediff(c.unet, c.vae, read_osediff(tiny_diffusion["osediff"]), merge=True)
    assert torch.allclose(c.unet.conv_in.weight, expected, atol=1e-6)
    assert not torch.allclose(c.unet.conv_in.weight, base_w, atol=1e-3)
    assert torch.equal(c.unet.conv_in.bias, raw["conv_in.base_layer.bias"])


def test_an_inactive_adapter_is_refused(tiny_diffusion, monkeypatch):
    c = sdlib.load(tiny_diffusion["base"])
    monkeypatch.setattr(type(c.unet), "set_adapter", lambda self, names: None)  # as if peft ignored the call
    with pytest.raises(RuntimeError, match="inactive"):
        apply_osediff(c.unet, c.vae, read_osediff(tiny_diffusion["osediff"]))


# ---- 2. names and shapes at full size -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:.*meta parameter")  # loading into meta tensors checks names and shapes only
def test_full_size_osediff_keys(tmp_path):
    unet, vae = full_size_meta()
    shapes = upstream_pkl_shapes(unet, vae)  # diffusers' own adapter naming, upstream's selection rule
    with open(KEYS_MANIFEST) as f:
        shipped = json.load(f)
    assert shipped["state_dict_unet"] == shapes["state_dict_unet"]
    assert shipped["state_dict_vae"] == shapes["state_dict_vae"]
    lora = sum(math.prod(s) for k, s in shapes["state_dict_unet"].items() if "lora" in k)
    layers = {k.split(".lora_")[0] for k in shapes["state_dict_unet"] if ".lora_A." in k}
    assert lora == 4_055_712 and len(layers) == 258  # 94 encoder + 148 decoder + 16 mid-block modules
    # a synthetic full-size osediff.pkl with those names loads into rasr's full-size model, nothing left over
    enc, dec, oth, vae_enc = (sorted({k.split(".lora_")[0] for k in shapes[part] if f".{a}." in k})
                              for part, a in (("state_dict_unet", "default_encoder"), ("state_dict_unet", "default_decoder"),
                                              ("state_dict_unet", "default_others"), ("state_dict_vae", "default_encoder")))
    assert (len(enc), len(dec), len(oth)) == (94, 148, 16)
    pkl = {"unet_lora_encoder_modules": enc, "unet_lora_decoder_modules": dec, "unet_lora_others_modules": oth,
           "vae_lora_encoder_modules": vae_enc, "rank_unet": 4, "rank_vae": 4,
           "state_dict_unet": {k: torch.zeros(s) for k, s in shapes["state_dict_unet"].items()},
           "state_dict_vae": {k: torch.zeros(s) for k, s in shapes["state_dict_vae"].items()}}
    torch.save(pkl, tmp_path / "osediff.pkl")
    w = read_osediff(str(tmp_path / "osediff.pkl"))
    check_keys(w)
    comps = sdlib.build_random(device="meta")
    apply_osediff(comps.unet, comps.vae, w, merge=False)  # raises on any missing or unexpected tensor
    assert inactive_adapters(comps.unet) == [] and len(lora_layers(comps.unet)) == 258
    # a checkpoint with a renamed tensor and a wrong shape is refused, naming them
    bad = dict(pkl, state_dict_unet=dict(pkl["state_dict_unet"]))
    bad["state_dict_unet"]["mid_block.resnets.0.conv1.lora_A.default_others.weight"] = torch.zeros(8, 1280, 3, 3)
    bad["state_dict_unet"]["conv_in.lora_A.default_x.weight"] = bad["state_dict_unet"].pop(
        "conv_in.lora_A.default_encoder.weight")
    torch.save(bad, tmp_path / "bad.pkl")
    with pytest.raises(ValueError) as e:
        check_keys(read_osediff(str(tmp_path / "bad.pkl")))
    for name in ("conv_in.lora_A.default_x.weight", "conv_in.lora_A.default_encoder.weight",
                 "mid_block.resnets.0.conv1.lora_A.default_others.weight"):
        assert name in str(e.value)


# ---- 3. RefDSR against an independent forward -----------------------------------------------------------------

def _merged_by_hand(model: torch.nn.Module, lora: dict[str, torch.Tensor], scaling: float) -> None:
    """W += scaling * B @ A for each (module, lora_A, lora_B) triple named in `lora` (peft's names)."""
    params = dict(model.named_parameters())
    for key in [k for k in lora if ".lora_A." in k]:
        module = key.split(".lora_A.")[0]
        a, b = lora[key], lora[key.replace(".lora_A.", ".lora_B.")]
        w = params[module + ".weight"]
        with torch.no_grad():
            w += scaling * (b.flatten(1) @ a.flatten(1)).view_as(w)


def test_refdsr_matches_an_independent_forward(tiny_diffusion, upstream, gens):
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    base = tiny_diffusion["base"]
    unet, vae = upstream
    # the OSEDiff backbone merged with peft's own merge (not rasr's), copied into a plain UNet
    merged = copy.deepcopy(unet)
    for _, layer in lora_layers(merged):
        layer.merge(adapter_names=list(layer.lora_A.keys()))
    plain = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in merged.state_dict().items() if "lora_" not in k})
    controlnet = ControlNetModel.from_unet(plain, conditioning_channels=4, conditioning_embedding_out_channels=(16,))
    branch = load_file(os.path.join(tiny_diffusion["branch"], BRANCH_FILE))
    meta = json.load(open(os.path.join(tiny_diffusion["branch"], BRANCH_META)))
    controlnet.load_state_dict({k: v for k, v in branch.items() if "lora_" not in k}, strict=False)
    _merged_by_hand(controlnet, {k: v for k, v in branch.items() if "lora_" in k}, meta["alpha"] / meta["rank"])
    ref_vae = AutoencoderKL.from_pretrained(base, subfolder="vae")  # the plain VAE: no OSEDiff LoRA
    sched = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    sched.set_timesteps(timesteps=[TIMESTEP])  # one step from t=999 to the clean latent, as OSEDiff
    m = gens["refdsr"].model
    x, ref = rand(1, 3, 128, 128) * 2 - 1, rand(1, 3, 128, 128, seed=1) * 2 - 1
    null, text = m.text_embeddings([""]), m.text_embeddings(["a cat, grass"])
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode() * sf
        r = ref_vae.encode(ref).latent_dist.mode() * sf
        down, mid = controlnet(z, TIMESTEP, encoder_hidden_states=null, controlnet_cond=r, conditioning_scale=0.5,
                               return_dict=False)
        full_res = len(plain.up_blocks[-1].resnets)  # the skips the last decoder block eats get nothing
        down = [torch.zeros_like(d) if j < full_res else d for j, d in enumerate(down)]
        hook = plain.up_blocks[-1].register_forward_pre_hook(  # the text only in the last decoder block
            lambda mod, args, kw: (args, {**kw, "encoder_hidden_states": text}), with_kwargs=True)
        try:
            eps = plain(z, TIMESTEP, encoder_hidden_states=null, down_block_additional_residuals=down,
                        mid_block_additional_residual=torch.zeros_like(mid)).sample
        finally:
            hook.remove()
        x0 = sched.step(eps, TIMESTEP, z).prev_sample
        expected = vae.decode(x0 / sf).sample.clamp(-1, 1)
        got = m.restore(x, text, tile=96, overlap=32, ref=ref, fusion_scale=0.5)
        no_ref = m.restore(x, text, tile=96, overlap=32)
    assert (got - expected).abs().max() < 1e-4
    assert (no_ref - expected).abs().max() > 1e-3  # the branch matters: the comparison can fail


def test_a_branch_trained_on_the_old_backbone_is_refused(tiny_diffusion, tmp_path):
    old = tmp_path / "old-branch"
    shutil.copytree(tiny_diffusion["branch"], old)
    meta = json.loads((old / BRANCH_META).read_text())
    assert meta["backbone_recipe"] == "osediff-all-adapters/2"
    del meta["backbone_recipe"]  # as every branch saved before the fix
    (old / BRANCH_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="[Rr]etrain"):
        read_branch(str(old))
    with pytest.raises(ValueError, match="[Rr]etrain"):
        load_generator("refdsr", weights=tiny_diffusion["base"], osediff_weights=tiny_diffusion["osediff"],
                       refdsr_weights=str(old))


# ---- 4. inference defaults ------------------------------------------------------------------------------------

def test_adain_is_upstreams_and_the_default_for_diffusion(gens, chelsea):
    out, src = rand(2, 3, 20, 30), rand(2, 3, 20, 30, seed=1) * 0.5 + 0.2
    o, s = out.numpy().reshape(2, 3, -1), src.numpy().reshape(2, 3, -1)
    # OSEDiff's calc_mean_std: std = sqrt(unbiased variance + 1e-5)
    std = lambda a: np.sqrt(a.var(axis=2, ddof=1, keepdims=True) + 1e-5)
    expected = (o - o.mean(2, keepdims=True)) / std(o) * std(s) + s.mean(2, keepdims=True)
    assert np.allclose(colorfix.adain(out, src).numpy().reshape(2, 3, -1), expected, atol=1e-5)
    assert Restorer(gens["osediff"]).color_fix == "adain" and Restorer(gens["refdsr"]).color_fix == "adain"
    assert colorfix.resolve("auto", "realesrgan") == "wavelet" and colorfix.resolve("auto", "bicubic") == "none"
    assert Restorer(gens["osediff"], color_fix="none").color_fix == "none"
    # end to end: by default the output takes the channel means of the PIL-upscaled input, as upstream's
    lr = chelsea[100:132, 200:232]
    up = np.asarray(Image.fromarray(lr).resize((128, 128), Image.BICUBIC)).astype(np.float64) / 255
    err = {fix: np.abs(Restorer(gens["osediff"], color_fix=fix).restore([lr])[0].mean((0, 1)) / 255
                       - up.mean((0, 1))).max() for fix in ("auto", "none")}
    assert err["auto"] < 0.02 < err["none"]  # (the random tiny model's output clips, so only the means are exact)


def test_prompts_are_upstreams(tmp_path):
    assert osediff_prompt("cat, grass") == f"{'cat, grass'}, {''}," == "cat, grass, ,"

    class FixedLogits(torch.nn.Module):  # logits a stand-in export always returns
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([0.0, 2.0, -1.0, 5.0]).expand(x.shape[0], 4) + 0 * x.mean()

    program = torch.export.export(FixedLogits(), (torch.rand(1, 3, 384, 384),))
    torch.export.save(program, str(tmp_path / "ram.pt2"))
    (tmp_path / "ram.txt").write_text("cat\ndog\ngrass\ncar\n")
    thresholds = [0.5, 0.9, 0.2, 0.99]
    (tmp_path / "ram_threshold.txt").write_text("\n".join(map(str, thresholds)) + "\n")
    probs = 1 / (1 + np.exp(-np.array([0.0, 2.0, -1.0, 5.0])))
    expected = ", ".join(t for t, p, th in zip(["cat", "dog", "grass", "car"], probs, thresholds) if p > th)
    ram = RamTagger(str(tmp_path / "ram.pt2"))
    assert ram.tags([np.zeros((16, 16, 3), np.uint8)]) == [expected] == ["grass, car"]  # 0.5 > 0.5 is off


def test_ram_sees_the_upscaled_lr_as_upstream_does(tmp_path, chelsea):
    from torchvision import transforms

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))[:, :1]

    torch.jit.save(torch.jit.script(Identity()), str(tmp_path / "ram.ts"))
    (tmp_path / "ram.txt").write_text("x\n")
    ram = RamTagger(str(tmp_path / "ram.ts"))
    lr = chelsea[50:90, 100:160]
    up = Image.fromarray(lr).resize((240, 160))  # OSEDiff: input_image.resize((w * 4, h * 4)), PIL's default
    expected = transforms.Resize((384, 384))(transforms.ToTensor()(up).unsqueeze(0))
    assert (ram._input(lr, scale=4) - expected).abs().max() < 1e-5


def test_small_inputs_are_enlarged_as_upstream(gens, chelsea):
    g = gens["osediff"]
    lr = chelsea[120:160, 200:260]  # 40 x 60: shorter than 128
    seen = []
    hook = g.model.vae.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        y = Restorer(g).restore([lr])[0]
    finally:
        hook.remove()
    k = 128 / 40  # test_osediff.py: scale = (process_size // upscale) / min(w, h); int() of each side; then x4
    img = Image.fromarray(lr).resize((int(k * 60), int(k * 40)))
    img = img.resize((img.width * 4, img.height * 4))
    expected = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    assert seen[0].shape[-2:] == (512, 768) and (seen[0][0] - expected).abs().max() < 1e-5
    assert y.shape == (160, 240, 3)  # scaled back to x4 the input (upstream forgets to)


def test_vae_is_not_tiled_up_to_2048_and_leaves_no_seams(gens):
    g = gens["osediff"]
    assert g.vae_tile_size == 2048 and g.model.vae.tile_sample_min_size == 2048 and g.model.vae.use_tiling
    assert (g.tile_size, g.tile_overlap) == (768, 256)  # upstream's latent tiles: 96 latents overlapping 32
    # a smooth image: any step at a tile border would be a seam
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    lr = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.3 * xx * yy])[None]
    y = g.restore(lr, None, [""])
    g.model.vae.disable_tiling()
    try:
        untiled = g.restore(lr, None, [""])
    finally:
        g.model.vae.enable_tiling()
    assert torch.equal(y, untiled)  # 384 px: one VAE pass
    old = DiffusionGenerator("osediff", g.model, g.weights_id, vae_tile_size=128)  # the old 512-px tiles, scaled
    try:
        tiled = old.restore(lr, None, [""])
    finally:
        g.model.vae.tile_sample_min_size, g.model.vae.tile_latent_min_size = 2048, 256
    step = lambda im: (im.diff(dim=-1).abs().mean((0, 1, 2)))  # mean step between columns
    border = [95, 96, 191, 192, 287, 288]  # diffusers blends tiles of 128 px every 96 px
    inner = [i for i in range(8, 375) if all(abs(i - b) > 3 for b in border)]
    assert step(tiled)[border].max() > step(y)[border].max()
    assert step(y)[border].max() <= 1.5 * step(y)[inner].max()


def test_color_fix_bench_runs():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench", "color_fix.py")
    spec = importlib.util.spec_from_file_location("color_fix_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--smoke"])  # the measurement behind realesrgan's default, on 2 photos
    assert result["photos"] == 2 and set(result["best"]) == {"degraded", "clean"}
    assert all(10 < result[f"psnr_{p}_{f}"] < 50 for p in ("degraded", "clean") for f in bench.FIXES)
