"""OSEDiff (Wu et al., NeurIPS 2024): one-step diffusion super-resolution on SD-2.1-base, and its weights.

The model (`OneStepSR`):

    LR (B, 3, h, w) in [0, 1] -> bicubic x4 -> [-1, 1] -> VAE encoder (+ OSEDiff's encoder LoRA)
    -> z * scaling_factor -> UNet(z, t=999, prompt) -> x0 from the scheduler's alpha-bar at t=999
    -> VAE decoder -> [-1, 1]

No noise is added: the LR latent itself is the "noisy" input at t=999, so one UNet call restores it.

Released weights (`osediff.pkl` from github.com/cswry/OSEDiff) are a `torch.save`d dict:

    unet_lora_encoder_modules, unet_lora_decoder_modules, unet_lora_others_modules   list[str] module names
    vae_lora_encoder_modules                                                          list[str] module names
    rank_unet, rank_vae                                                               int (LoRA rank, 4)
    state_dict_unet   {peft parameter name: tensor}: LoRA A/B of adapters default_encoder / default_decoder /
                      default_others, plus conv_in (base_layer weight and bias: OSEDiff trains conv_in fully)
    state_dict_vae    {peft parameter name: tensor}: LoRA A/B of adapter default_encoder

OSEDiff builds each adapter as `LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=names)`, so
lora_alpha is peft's default, 8 (scaling 8 / 4 = 2); we pin it to 8 so a changed peft default cannot change
the model. The file is read with `torch.load(weights_only=True)`, which accepts only dicts, lists, strings,
numbers and tensors: never arbitrary pickled objects. Convert it once to safetensors + JSON with

    python -c "from rasr.restoration.generators.osediff import osediff_pkl_to_safetensors as c; c('osediff.pkl', 'osediff/')"

which writes osediff/osediff.safetensors (keys "unet.<name>", "vae.<name>") and osediff/osediff.json
(module lists, ranks, alphas); the loader takes the .pkl, that folder, or the .safetensors file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from rasr import weights as wts
from rasr.restoration.generators.sd import SDComponents, encode_prompts
from rasr.restoration.generators.tiling import tiled_apply

TIMESTEP = 999          # OSEDiff's single step
OSEDIFF_ALPHA = 8.0     # peft's default lora_alpha when OSEDiff was trained (it never set one)
UNET_ADAPTERS = ("default_encoder", "default_decoder", "default_others")
FORMAT = "osediff-lora/1"


@dataclass
class OSEDiffWeights:
    unet_modules: dict[str, list[str]]   # adapter name -> target module names
    vae_modules: dict[str, list[str]]
    rank_unet: int
    rank_vae: int
    alpha_unet: float
    alpha_vae: float
    unet: dict[str, torch.Tensor]        # peft parameter names of the UNet (LoRA + conv_in)
    vae: dict[str, torch.Tensor]
    weights_id: str
    files: dict[str, str] = field(default_factory=dict)  # {"osediff/<file>": sha256} of what was read

    def meta(self) -> dict:
        return {"format": FORMAT, "unet_modules": self.unet_modules, "vae_modules": self.vae_modules,
                "rank_unet": self.rank_unet, "rank_vae": self.rank_vae,
                "alpha_unet": self.alpha_unet, "alpha_vae": self.alpha_vae}


def _digest(meta: dict, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    h.update(wts.tensors_digest(tensors, length=64).encode())
    return h.hexdigest()[:16]


def _from_pkl_dict(d: dict, source: str) -> OSEDiffWeights:
    def need(*keys):
        for k in keys:
            if k in d:
                return d[k]
        raise ValueError(f"{source} is not an OSEDiff checkpoint: key {keys[0]!r} is missing "
                         f"(found {', '.join(sorted(map(str, d))[:12])})")

    rank_unet, rank_vae = int(need("rank_unet", "lora_rank_unet")), int(need("rank_vae", "lora_rank_vae"))
    meta = {"format": FORMAT,
            "unet_modules": {a: list(need(f"unet_lora_{a.split('_')[1]}_modules")) for a in UNET_ADAPTERS},
            "vae_modules": {"default_encoder": list(need("vae_lora_encoder_modules"))},
            "rank_unet": rank_unet, "rank_vae": rank_vae,
            "alpha_unet": float(d.get("lora_alpha_unet", OSEDIFF_ALPHA)),
            "alpha_vae": float(d.get("lora_alpha_vae", OSEDIFF_ALPHA))}
    return _from_parts(meta, dict(need("state_dict_unet")), dict(need("state_dict_vae")))


def _from_parts(meta: dict, unet: dict, vae: dict) -> OSEDiffWeights:
    tensors = {**{f"unet.{k}": v for k, v in unet.items()}, **{f"vae.{k}": v for k, v in vae.items()}}
    return OSEDiffWeights(meta["unet_modules"], meta["vae_modules"], int(meta["rank_unet"]), int(meta["rank_vae"]),
                          float(meta["alpha_unet"]), float(meta["alpha_vae"]), unet, vae, _digest(meta, tensors))


def read_osediff(ref: str) -> OSEDiffWeights:
    """Read OSEDiff weights: osediff.pkl (weights_only), or the converter's folder / .safetensors + .json."""
    path = wts.localize(ref)
    if os.path.isdir(path):
        path = os.path.join(path, "osediff.safetensors")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        meta_path = path[: -len(".safetensors")] + ".json"
        if not (os.path.exists(path) and os.path.exists(meta_path)):
            raise wts.WeightsNotFound(f"OSEDiff weights need {path} and {meta_path}: write them with "
                                      f"osediff_pkl_to_safetensors(pkl, out_dir), or give the .pkl")
        with open(meta_path) as f:
            meta = json.load(f)
        flat = load_file(path, device="cpu")
        unet = {k[len("unet."):]: v for k, v in flat.items() if k.startswith("unet.")}
        vae = {k[len("vae."):]: v for k, v in flat.items() if k.startswith("vae.")}
        w = _from_parts(meta, unet, vae)
        w.files = {**wts.file_sha256s(path, "osediff"), **wts.file_sha256s(meta_path, "osediff")}
        return w
    w = _from_pkl_dict(wts.load_state_dict(path), ref)
    w.files = wts.file_sha256s(path, "osediff")
    return w


def osediff_pkl_to_safetensors(pkl: str, out_dir: str) -> str:
    """One-time conversion of osediff.pkl to out_dir/osediff.safetensors + osediff.json; returns out_dir."""
    from safetensors.torch import save_file

    w = read_osediff(pkl)
    os.makedirs(out_dir, exist_ok=True)
    flat = {**{f"unet.{k}": v.contiguous() for k, v in w.unet.items()},
            **{f"vae.{k}": v.contiguous() for k, v in w.vae.items()}}
    save_file(flat, os.path.join(out_dir, "osediff.safetensors"))
    with open(os.path.join(out_dir, "osediff.json"), "w") as f:
        json.dump(w.meta(), f, indent=1)
    return out_dir


KEYS_MANIFEST = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data",
                             "osediff_sd21base_keys.json")  # rasr/data


def is_sd21_base(unet: nn.Module) -> bool:
    """True for a UNet with SD-2.1-base's shape (the model osediff.pkl was trained on)."""
    c = unet.config
    return tuple(c.block_out_channels) == (320, 640, 1280, 1280) and c.cross_attention_dim == 1024


def check_keys(w: OSEDiffWeights, manifest: str = KEYS_MANIFEST) -> None:
    """Refuse OSEDiff weights whose tensor names or shapes differ from those the released osediff.pkl must
    have on SD-2.1-base (rasr/data/osediff_sd21base_keys.json, derived from diffusers' adapter naming)."""
    with open(manifest) as f:
        expected = json.load(f)
    for part, got in (("state_dict_unet", w.unet), ("state_dict_vae", w.vae)):
        want = {k: list(v) for k, v in expected[part].items()}
        have = {k: list(t.shape) for k, t in got.items()}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or extra or wrong:
            raise ValueError(
                f"OSEDiff weights ({w.weights_id}) do not match osediff.pkl for SD-2.1-base in {part}: "
                f"{len(missing)} missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(wrong)} of another "
                f"shape {[(k, have[k], want[k]) for k in wrong[:3]]}; is this OSEDiff's released osediff.pkl?")


def _load_exact(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load LoRA (+ conv_in) tensors; every LoRA parameter must be given and every given tensor used."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ValueError(f"{what} tensors do not fit the model ({str(e)[:300]}): are they for SD-2.1-base?") from None
    lora_missing = [k for k in missing if "lora_" in k]
    if unexpected or lora_missing:
        raise ValueError(f"{what} tensors do not fit the model: {len(unexpected)} unexpected "
                         f"{unexpected[:3]}, {len(lora_missing)} LoRA tensors missing {lora_missing[:3]}")


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every peft LoRA layer in a model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def inactive_adapters(model: nn.Module) -> list[str]:
    """'layer: adapter' for each LoRA adapter a layer holds but does not run (empty when all act)."""
    out = []
    for name, layer in lora_layers(model):
        active = set(layer.active_adapters)
        out += [f"{name}: {a}" for a in sorted(layer.lora_A.keys()) if a not in active]
    return out


def apply_osediff(unet: nn.Module, vae: nn.Module, w: OSEDiffWeights, merge: bool = True) -> None:
    """Add OSEDiff's LoRA adapters to the UNet and VAE encoder as upstream does, load them, activate
    every one of them, and merge them in by default.

    Upstream (OSEDiff_test.load_ckpt): one `add_adapter` per adapter, tensors copied by name, then
    `set_adapter([all adapters])`. Each add_adapter leaves only the adapter it just added active, so the
    last step matters: without it only `default_others` (the mid block) would act."""
    from peft import LoraConfig

    for model, modules, rank, alpha, state, what in (
            (unet, w.unet_modules, w.rank_unet, w.alpha_unet, w.unet, "OSEDiff UNet"),
            (vae, w.vae_modules, w.rank_vae, w.alpha_vae, w.vae, "OSEDiff VAE")):
        for adapter, targets in modules.items():
            cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                             target_modules=sorted(set(targets)))
            with warnings.catch_warnings():  # several adapters on one model is OSEDiff's layout, not a mistake
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                model.add_adapter(cfg, adapter_name=adapter)
        _load_exact(model, state, what)
        names = list(modules)
        model.set_adapter(names)
        off = inactive_adapters(model)
        if off:  # a peft/diffusers change must never again silently drop adapters
            raise RuntimeError(f"{what}: {len(off)} LoRA adapters inactive after set_adapter ({off[:3]})")
        model.requires_grad_(False)
        if merge:  # one-step inference never changes the backbone: fold every adapter into the weights
            model.fuse_lora(adapter_names=names)
            model.unload_lora()


class OneStepSR(nn.Module):
    """OSEDiff's generator: frozen SD-2.1-base (OSEDiff LoRA merged) restoring in one UNet call at t=999."""

    def __init__(self, sd: SDComponents):
        super().__init__()
        self.unet, self.vae, self.text_encoder = sd.unet, sd.vae, sd.text_encoder
        self.tokenizer = sd.tokenizer
        self.alpha_bar = float(sd.scheduler.alphas_cumprod[TIMESTEP])  # alpha-bar at t=999 (~0.0047 for SD)
        self.prediction_type = sd.scheduler.config.prediction_type
        self.scaling = float(sd.vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(sd.vae.config.block_out_channels) - 1)    # 8: pixels per latent
        self.unet_scale = 2 ** (len(sd.unet.config.block_out_channels) - 1)  # 8: latent per deepest feature
        self._null: torch.Tensor | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def hr_multiple(self) -> int:
        """Output sides must be multiples of this (64 for SD: VAE x8 then three UNet downsamples)."""
        return self.vae_scale * self.unet_scale

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """B prompts -> (B, 77, D) in the model's dtype."""
        return encode_prompts(self.tokenizer, self.text_encoder, prompts).to(self.dtype)

    def null_embeddings(self, batch: int) -> torch.Tensor:
        """The empty prompt's embedding, (batch, 77, D), computed once."""
        stale = self._null is None or self._null.device != self.unet.device or self._null.dtype != self.dtype
        # a tensor made under inference_mode (the Restorer) cannot enter a training graph later
        if stale or (self._null.is_inference() and not torch.is_inference_mode_enabled()):
            self._null = self.text_embeddings([""])
        return self._null.expand(batch, -1, -1)

    def encode_lr(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) scaled latent; the posterior mode unless a generator samples."""
        dist = self.vae.encode(x.to(self.dtype)).latent_dist
        z = dist.mode() if generator is None else dist.sample(generator)
        return z * self.scaling

    def model_output(self, z: torch.Tensor, text: torch.Tensor, **branch) -> torch.Tensor:
        """UNet output at t=999 with the prompt in every cross-attention (plain OSEDiff)."""
        return self.unet(z, TIMESTEP, encoder_hidden_states=text).sample

    def to_x0(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean latent the UNet output implies at t=999 (one DDPM step to t=-1 adds no noise)."""
        a = self.alpha_bar
        if self.prediction_type == "epsilon":
            return (z - math.sqrt(1 - a) * out) / math.sqrt(a)
        if self.prediction_type == "v_prediction":
            return math.sqrt(a) * z - math.sqrt(1 - a) * out
        return out  # "sample"

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> (B, 3, 8h, 8w) image in [-1, 1]."""
        return self.vae.decode(z0.to(self.dtype) / self.scaling).sample.clamp(-1, 1)

    def forward(self, x: torch.Tensor, text: torch.Tensor, **branch) -> torch.Tensor:
        """Upsampled LR in [-1, 1] -> restored image in [-1, 1], differentiable (no tiling)."""
        z = self.encode_lr(x)
        return self.decode(self.to_x0(z, self.model_output(z, text, **branch)))

    @torch.no_grad()
    def restore(self, x: torch.Tensor, text: torch.Tensor, tile: int, overlap: int,
                generator: torch.Generator | None = None, **branch) -> torch.Tensor:
        """Inference on any size: latent tiles of `tile` (latent px) overlapping by `overlap`, VAE tiling above it."""
        z = self.encode_lr(x, generator)
        if max(z.shape[-2:]) > tile:
            out = tiled_apply(lambda zt: self.model_output(zt, text, **branch), z, tile, overlap, window="gaussian")
        else:
            out = self.model_output(z, text, **branch).float()
        return self.decode(self.to_x0(z.float(), out))
