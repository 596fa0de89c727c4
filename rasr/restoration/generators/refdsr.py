"""RefDSR, the RASR paper's generator G: OSEDiff plus a trainable reference branch (a ControlNet copy).

    LR  -> bicubic x4 -> VAE encoder (+ OSEDiff LoRA) -> z -----------> UNet (frozen, OSEDiff) -> x0 -> VAE decoder
    REF -> resized to the x4 LR size (or a tile) -> VAE encoder (plain) -> r -> ControlNet(z, cond=r)
                                              residuals x fusion scale -> only the skips of up_blocks[0..2]

Decisions on what the paper leaves open (each has a test in tests/restoration/test_refdsr.py):
- Conditioning embedding: the reference enters as its 4-channel VAE latent, already at the UNet's resolution,
  so the stock image-space embedding (three stride-2 convs, 512 px -> 64) would shrink it 8x too far.
  `conditioning_embedding_out_channels=(16,)` leaves one conv 4->16 (SiLU) and the zero conv 16->320, with no
  stride: a learnt lift of the latent, zero at start so the untrained branch changes nothing.
- Residuals: "added to the first three decoder blocks" = the skip connections consumed by up_blocks[0], [1], [2]
  (9 of 12 for SD). The skips of up_blocks[-1] (full latent resolution) and the mid-block residual get nothing:
  the mid block is not a decoder block. Their zero convs therefore stay frozen at zero.
- Text: "cross-attention with the text only in the last decoder block": every other cross-attention (encoder,
  mid block, up_blocks[0..2], and the ControlNet) sees the empty prompt's embedding rather than being bypassed,
  which keeps the frozen OSEDiff weights on inputs they were trained with. The prompt is tags of LR + tags of REF.
- Trainable: LoRA rank 4 (alpha 8, as OSEDiff's LoRA) on the ControlNet copy's conv_in and down blocks (attention
  q/k/v/out, feed-forward, proj_in/out, resnet convs, downsamplers; OSEDiff's module list), the 9 zero convs
  whose residuals are used, and the conditioning embedding. Everything else is frozen.

Trainable parameters at full size (SD-2.1-base; printed by test_full_size_trainable_count):
    LoRA rank 4 on the ControlNet encoder  1,253,776
    9 used zero convs                      9,531,840
    conditioning embedding                    46,992   (conv_in 4->16: 592, zero conv_out 16->320: 46,400)
    total                                 10,832,608   = 10.83M vs the paper's 12.8M
The paper's figure is matched (12,780,448 = 12.78M) when one also counts the 3 unused down zero convs (308,160)
and the mid-block zero conv (1,639,680) of a stock ControlNet: they get no gradient here, so we do not train them.

Inference: fusion scale 0.5 (1.0 in training), latent tiles blended with gaussian weights above `tile_size`
output pixels, VAE tiling above it, posterior mode (or a seeded sample). Weights: SD-2.1-base (`weights`,
RASR_SD_BASE), OSEDiff (`osediff_weights`, RASR_OSEDIFF_WEIGHTS, see osediff.py), the branch (`refdsr_weights`,
RASR_REFDSR_WEIGHTS: a folder with refdsr_branch.safetensors + refdsr_branch.json, written by `save_branch`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from rasr import weights as wts
from rasr.restoration.generators import sd as sdlib
from rasr.restoration.generators.osediff import TIMESTEP, OneStepSR

BRANCH_FILE, BRANCH_META, BRANCH_FORMAT = "refdsr_branch.safetensors", "refdsr_branch.json", "refdsr-branch/1"
# The frozen backbone a branch was trained on. Branches saved before 2026-12-06 lack it: they were trained on
# a UNet where only OSEDiff's `default_others` adapter (the mid block) acted, so they fit no faithful backbone.
BACKBONE_RECIPE = "osediff-all-adapters/2"
# OSEDiff's LoRA module list, applied to the ControlNet copy's encoder (names end with one of these)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "conv", "conv_in")


@dataclass
class BranchConfig:
    rank: int = 4
    alpha: float = 8.0
    cond_channels: int = 16   # conditioning embedding: conv 4->cond_channels, SiLU, zero conv -> block_out[0]
    decoder_blocks: int = 3   # residuals go to the skips of up_blocks[:decoder_blocks]


def unet_forward(unet, z: torch.Tensor, t: int, ctx: torch.Tensor, last_ctx: torch.Tensor,
                 residuals: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """SD UNet pass (stock blocks) where only up_blocks[-1] attends to `last_ctx`, the rest to `ctx`.

    z: (B, 4, h, w) latent; ctx, last_ctx: (B, 77, D); residuals: one tensor or None per skip connection
    (conv_in, then each down resnet and downsampler), added to that skip before the decoder reads it."""
    if any(s % (2 ** unet.num_upsamplers) for s in z.shape[-2:]):
        raise ValueError(f"latent {tuple(z.shape[-2:])} must be a multiple of {2 ** unet.num_upsamplers}")
    emb = unet.time_embedding(unet.get_time_embed(z, t))  # (B, 4 * C0)
    h = unet.conv_in(z)
    skips = [h]
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=ctx)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    if residuals is not None:
        skips = [s if r is None else s + r for s, r in zip(skips, residuals)]
    h = unet.mid_block(h, emb, encoder_hidden_states=ctx)
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = tuple(skips[-n:]), skips[:-n]  # each decoder block eats the deepest remaining skips
        kw = {}
        if getattr(block, "has_cross_attention", False):
            kw["encoder_hidden_states"] = last_ctx if i == len(unet.up_blocks) - 1 else ctx
        h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, **kw)
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


def skip_owners(unet) -> list[int]:
    """For each skip connection (in creation order), the index of the up block that consumes it."""
    n_skips = 1 + sum(len(b.resnets) + (1 if getattr(b, "downsamplers", None) else 0) for b in unet.down_blocks)
    owners: list[int] = []
    for i, block in enumerate(unet.up_blocks):
        owners = [i] * len(block.resnets) + owners
    assert len(owners) == n_skips, (len(owners), n_skips)
    return owners


class RefDSR(OneStepSR):
    """OSEDiff with a reference branch: a ControlNet copy of the UNet encoder fed the reference's latent."""

    def __init__(self, sd: sdlib.SDComponents, ref_vae, cfg: BranchConfig | None = None):
        from diffusers import ControlNetModel
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__(sd)
        self.cfg = cfg or BranchConfig()
        self.fusion_scale = 0.5
        self.ref_vae = ref_vae  # the plain SD encoder: the reference gets no OSEDiff LoRA
        self.ref_vae.decoder = self.ref_vae.post_quant_conv = None  # only encode() is used
        self.ref_vae.requires_grad_(False)
        with torch.device(sd.unet.device):  # build where the UNet lives (meta for counting, cuda for speed)
            self.controlnet = ControlNetModel.from_unet(
                sd.unet, conditioning_channels=sd.unet.config.in_channels,
                conditioning_embedding_out_channels=(self.cfg.cond_channels,))
        if self.controlnet.dtype != sd.unet.dtype:
            self.controlnet.to(sd.unet.dtype)
        self.controlnet.requires_grad_(False)
        targets = [n for n, m in self.controlnet.named_modules()
                   if (n == "conv_in" or n.startswith("down_blocks.")) and isinstance(m, (nn.Linear, nn.Conv2d))
                   and any(n == t or n.endswith("." + t) for t in LORA_TARGETS)]
        # a regex of exact names: a plain list would also match controlnet_cond_embedding.conv_in by suffix
        pattern = "|".join(re.escape(n) for n in targets)
        inject_adapter_in_model(LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha, init_lora_weights="gaussian",
                                           target_modules=f"^(?:{pattern})$"), self.controlnet, adapter_name="refdsr")
        owners = skip_owners(sd.unet)
        self.used_skips = [j for j, o in enumerate(owners) if o < self.cfg.decoder_blocks]
        for name, p in self.controlnet.named_parameters():
            p.requires_grad_(self.is_branch_param(name))
        self._fused = False

    def is_branch_param(self, name: str) -> bool:
        """Trainable: LoRA, the conditioning embedding, and the zero convs whose residual is used."""
        if "lora_" in name or name.startswith("controlnet_cond_embedding."):
            return True
        if name.startswith("controlnet_down_blocks."):
            return int(name.split(".")[1]) in self.used_skips
        return False

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The branch's parameters, for the optimiser."""
        return [p for n, p in self.controlnet.named_parameters() if self.is_branch_param(n)]

    def branch_state_dict(self) -> dict[str, torch.Tensor]:
        """{name: tensor} of the branch's trainable parameters (ControlNet names)."""
        if self._fused:
            raise RuntimeError("the branch LoRA is fused for inference; save it before fuse_branch()")
        return {n: p.detach() for n, p in self.controlnet.named_parameters() if self.is_branch_param(n)}

    def save_branch(self, path: str, extra: dict | None = None) -> str:
        """Write path/refdsr_branch.safetensors + refdsr_branch.json; returns the folder."""
        from safetensors.torch import save_file

        state = {k: v.contiguous().cpu() for k, v in self.branch_state_dict().items()}
        os.makedirs(path, exist_ok=True)
        save_file(state, os.path.join(path, BRANCH_FILE))
        meta = {"format": BRANCH_FORMAT, "backbone_recipe": BACKBONE_RECIPE, **asdict(self.cfg),
                "lora_targets": list(LORA_TARGETS),
                "used_skips": self.used_skips, "trainable_params": sum(v.numel() for v in state.values()),
                **(extra or {})}
        with open(os.path.join(path, BRANCH_META), "w") as f:
            json.dump(meta, f, indent=1)
        return path

    def load_branch(self, path: str) -> str:
        """Load a saved branch (folder or .safetensors beside its .json); returns its weights id."""
        cfg, state = read_branch(path)
        if cfg != self.cfg:
            raise ValueError(f"branch at {path} was saved with {cfg}, this model has {self.cfg}")
        return self.load_branch_tensors(state)

    def load_branch_tensors(self, state: dict[str, torch.Tensor]) -> str:
        """Load branch tensors by name (all must be present, none extra); returns their digest."""
        expected = {n for n, _ in self.controlnet.named_parameters() if self.is_branch_param(n)}
        if set(state) != expected:
            raise ValueError(f"branch tensors do not fit: {len(expected - set(state))} missing "
                             f"{sorted(expected - set(state))[:3]}, {len(set(state) - expected)} unexpected "
                             f"{sorted(set(state) - expected)[:3]}")
        self.controlnet.load_state_dict(state, strict=False)
        return wts.tensors_digest(state)

    def fuse_branch(self) -> None:
        """Fold the branch LoRA into the ControlNet weights (inference only: faster, no longer trainable)."""
        self.controlnet.fuse_lora()
        self.controlnet.unload_lora()
        self.controlnet.requires_grad_(False)
        self._fused = True

    def encode_ref(self, ref: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Reference (B, 3, H', W') in [-1, 1] -> resized to `size` -> plain VAE latent (B, 4, h, w), scaled."""
        with torch.no_grad():
            ref = F.interpolate(ref.float(), size=tuple(size), mode="bicubic", align_corners=False,
                                antialias=True).clamp(-1, 1)
            return self.ref_vae.encode(ref.to(self.dtype)).latent_dist.mode() * self.scaling

    def model_output(self, z: torch.Tensor, text: torch.Tensor, ref_latent: torch.Tensor | None = None,
                     fusion_scale: float = 1.0) -> torch.Tensor:
        """UNet output at t=999: text only in the last decoder block; reference residuals in the first three."""
        null = self.null_embeddings(z.shape[0])
        residuals = None
        if ref_latent is not None:
            down, _mid = self.controlnet(z, TIMESTEP, encoder_hidden_states=null,
                                         controlnet_cond=ref_latent.to(z.dtype), conditioning_scale=fusion_scale,
                                         return_dict=False)
            residuals = [r if j in self.used_skips else None for j, r in enumerate(down)]
        return unet_forward(self.unet, z, TIMESTEP, ctx=null, last_ctx=text.to(z.dtype), residuals=residuals)

    def forward_train(self, lr_up: torch.Tensor, ref: torch.Tensor | None, prompt_embeds: torch.Tensor,
                      fusion_scale: float = 1.0) -> torch.Tensor:
        """Training pass: upsampled LR and reference in [-1, 1] (B, 3, H, W) -> prediction in [-1, 1];
        gradients reach only the branch."""
        with torch.no_grad():  # frozen encoders: no graph needed up to the latents
            z = self.encode_lr(lr_up)
            ref_latent = None if ref is None else self.encode_ref(ref, lr_up.shape[-2:])
        out = self.model_output(z, prompt_embeds, ref_latent=ref_latent, fusion_scale=fusion_scale)
        return self.decode(self.to_x0(z, out))

    @torch.no_grad()
    def restore(self, x: torch.Tensor, text: torch.Tensor, tile: int, overlap: int,
                generator: torch.Generator | None = None, ref: torch.Tensor | None = None,
                fusion_scale: float | None = None) -> torch.Tensor:
        """Inference; without `ref` the branch is skipped (no reference passed the similarity threshold)."""
        ref_latent = None
        if ref is not None:
            # a tiled image feeds every tile the whole reference at tile size, as in training (whole ref per crop)
            s = self.vae_scale
            ref_latent = self.encode_ref(ref, (min(x.shape[-2], tile * s), min(x.shape[-1], tile * s)))
        scale = self.fusion_scale if fusion_scale is None else fusion_scale
        return super().restore(x, text, tile, overlap, generator, ref_latent=ref_latent, fusion_scale=scale)


def read_branch(ref: str) -> tuple[BranchConfig, dict[str, torch.Tensor]]:
    """Read a saved branch: a folder (or .safetensors) with refdsr_branch.json beside it."""
    from safetensors.torch import load_file

    path = wts.localize(ref)
    st = os.path.join(path, BRANCH_FILE) if os.path.isdir(path) else path
    meta_path = os.path.join(os.path.dirname(st), BRANCH_META)
    if not (st.endswith(".safetensors") and os.path.exists(st) and os.path.exists(meta_path)):
        raise wts.WeightsNotFound(f"RefDSR branch at {ref} needs {BRANCH_FILE} and {BRANCH_META} "
                                  f"(written by RefDSR.save_branch)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != BRANCH_FORMAT:
        raise ValueError(f"{meta_path} has format {meta.get('format')!r}, expected {BRANCH_FORMAT!r}")
    if meta.get("backbone_recipe") != BACKBONE_RECIPE:
        raise ValueError(
            f"RefDSR branch at {ref} was trained on backbone recipe {meta.get('backbone_recipe') or 'none recorded'}, "
            f"not {BACKBONE_RECIPE}: branches saved before 2026-12-06 were trained on a UNet where only one of "
            f"OSEDiff's three LoRA adapters acted, so they do not fit the faithful backbone. Retrain the branch "
            f"(`rasr train`) with this version")
    cfg = BranchConfig(**{k: meta[k] for k in asdict(BranchConfig()) if k in meta})
    return cfg, load_file(st, device="cpu")
