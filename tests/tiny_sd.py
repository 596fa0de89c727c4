"""Tiny SD components for fast CPU tests: built from configs, saved in the diffusers layout, plus a fake osediff.pkl.

The UNet keeps SD's shape (4 down / 4 up blocks, cross-attention in all but the deepest, linear projections)
at 32-64 channels; the VAE keeps SD's 8x downscale (4 blocks) at 32 channels. Everything builds in well
under a second.
"""

from __future__ import annotations

import copy
import os

import torch

from rasr.restoration.generators import sd as sdlib

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 64, 64), layers_per_block=1, attention_head_dim=(2, 2, 4, 4),
    cross_attention_dim=32, use_linear_projection=True, norm_num_groups=8,  # 8+ values per group at 1x1
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
    block_out_channels=(32, 32, 32, 32), norm_num_groups=32, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
TINY_TEXT = dict(
    vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, projection_dim=32, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
)


def build_tiny(seed: int = 0) -> sdlib.SDComponents:
    """Random tiny SD components (deterministic for a seed)."""
    torch.manual_seed(seed)
    return sdlib.build_random(TINY_UNET, TINY_VAE, TINY_TEXT)


def save_tiny(comps: sdlib.SDComponents, folder: str) -> str:
    """Save in the diffusers layout users download: unet/ vae/ text_encoder/ tokenizer/ scheduler/."""
    for sub, obj in (("unet", comps.unet), ("vae", comps.vae), ("text_encoder", comps.text_encoder),
                     ("tokenizer", comps.tokenizer), ("scheduler", comps.scheduler)):
        obj.save_pretrained(os.path.join(folder, sub))
    return folder


def osediff_module_lists(unet, vae) -> tuple[list[str], list[str], list[str], list[str]]:
    """OSEDiff's LoRA target lists, chosen as its training script does (name patterns, encoder/decoder/others)."""
    grep = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
            "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    enc, dec, oth = [], [], []
    for n, _ in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pat in grep:
            if pat in n and ("down_blocks" in n or "conv_in" in n):
                enc.append(n.replace(".weight", ""))
                break
            if pat in n and ("up_blocks" in n or "conv_out" in n):
                dec.append(n.replace(".weight", ""))
                break
            if pat in n:
                oth.append(n.replace(".weight", ""))
                break
    vae_enc = []
    for n, _ in vae.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pat in ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v",
                    "to_out.0"]:  # no break, as in OSEDiff: names repeat, peft takes them as a set
            if (pat in n and "encoder" in n) or ("quant_conv" in n and "post_quant_conv" not in n):
                vae_enc.append(n.replace(".weight", ""))
    return enc, dec, oth, vae_enc


def add_upstream_adapters(unet, vae, rank: int = 4) -> tuple[list[str], list[str], list[str], list[str]]:
    """OSEDiff's training initialisers (initialize_unet / initialize_vae): one diffusers `add_adapter` per
    adapter on lists chosen by upstream's rule. Returns the lists (encoder, decoder, others, vae encoder)."""
    from peft import LoraConfig

    enc, dec, oth, vae_enc = osediff_module_lists(unet, vae)
    for name, targets in (("default_encoder", enc), ("default_decoder", dec), ("default_others", oth)):
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=targets), adapter_name=name)
    vae.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=vae_enc),
                    adapter_name="default_encoder")
    return enc, dec, oth, vae_enc


def make_fake_osediff_pkl(unet, vae, path: str, rank: int = 4, seed: int = 0) -> str:
    """Write an osediff.pkl in OSEDiff's exact layout with random (non-zero) LoRA tensors for these models.

    Built as OSEDiff's training builds and saves it (diffusers add_adapter, then `state_dict()` entries with
    "lora" or "conv_in" in their names), never through rasr's loader."""
    unet, vae = copy.deepcopy(unet), copy.deepcopy(vae)
    enc, dec, oth, vae_enc = add_upstream_adapters(unet, vae, rank)
    g = torch.Generator().manual_seed(seed)
    for model in (unet, vae):
        for n, p in model.named_parameters():
            if "lora_" in n:  # LoRA B starts at zero: make every tensor matter
                p.data = torch.randn(p.shape, generator=g) * 0.05
            elif "conv_in" in n and model is unet:
                p.data = p.data + torch.randn(p.shape, generator=g) * 0.05
    ckpt = {
        "unet_lora_encoder_modules": enc, "unet_lora_decoder_modules": dec, "unet_lora_others_modules": oth,
        "vae_lora_encoder_modules": vae_enc, "rank_unet": rank, "rank_vae": rank,
        "state_dict_unet": {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v.clone() for k, v in vae.state_dict().items() if "lora" in k},
    }
    torch.save(ckpt, path)
    return path


def upstream_osediff(sd_dir: str, pkl: str):
    """(unet, vae) as OSEDiff_test builds them (osediff.py, load_ckpt), independently of rasr: diffusers
    from_pretrained, one add_adapter per adapter, every LoRA / conv_in parameter copied by name from the pkl,
    set_adapter on all three UNet adapters. LoRA stays unmerged (upstream's default)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    model = torch.load(pkl, weights_only=True)
    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(sd_dir, subfolder="vae")
    for name, key in (("default_encoder", "encoder"), ("default_decoder", "decoder"), ("default_others", "others")):
        cfg = LoraConfig(r=model["rank_unet"], init_lora_weights="gaussian",
                         target_modules=model[f"unet_lora_{key}_modules"])
        unet.add_adapter(cfg, adapter_name=name)
    for n, p in unet.named_parameters():
        if "lora" in n or "conv_in" in n:
            p.data.copy_(model["state_dict_unet"][n])
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    vae.add_adapter(LoraConfig(r=model["rank_vae"], init_lora_weights="gaussian",
                               target_modules=model["vae_lora_encoder_modules"]), adapter_name="default_encoder")
    for n, p in vae.named_parameters():
        if "lora" in n:
            p.data.copy_(model["state_dict_vae"][n])
    vae.set_adapter(["default_encoder"])
    return unet.eval(), vae.eval()


def perturb_branch(model, scale: float = 0.05, seed: int = 1) -> None:
    """Give the branch's zero-initialised tensors (zero convs, LoRA B) random values, as if trained."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p) * scale)


def upstream_pkl_shapes(unet, vae, rank: int = 4) -> dict[str, dict[str, list[int]]]:
    """{state_dict_unet / state_dict_vae: {name: shape}} that OSEDiff's save writes for these models, from
    diffusers' own adapter naming (works on the meta device: no memory, no weights)."""
    add_upstream_adapters(unet, vae, rank)
    return {"state_dict_unet": {k: list(v.shape) for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
            "state_dict_vae": {k: list(v.shape) for k, v in vae.state_dict().items() if "lora" in k}}


def full_size_meta():
    """SD-2.1-base UNet and VAE from their configs on the meta device, built with diffusers directly."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**sdlib.UNET_CONFIG), AutoencoderKL(**sdlib.VAE_CONFIG)
