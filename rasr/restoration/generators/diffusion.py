"""The diffusion generators `osediff` and `refdsr` as the pipeline uses them: finding and loading their
weights (SD-2.1-base, the OSEDiff LoRA, the RefDSR branch) with one error naming every missing part, and
the Generator wrapper (x4, internal tiling, prompts from the tagger, precision). The models themselves
are in osediff.py (OneStepSR) and refdsr.py (RefDSR)."""

from __future__ import annotations

import copy
import hashlib
import os

import torch

from rasr import storage
from rasr import weights as wts
from rasr.devices import parse_dtype, pick_device
from rasr.restoration.images import resize_pil
from rasr.restoration.generators import sd as sdlib
from rasr.restoration.generators.base import Generator
from rasr.restoration.generators.osediff import OneStepSR, apply_osediff, check_keys, is_sd21_base, read_osediff
from rasr.restoration.generators.refdsr import BRANCH_FILE, BRANCH_META, BranchConfig, RefDSR, read_branch


HOW = {
    "SD-2.1-base": "give a diffusers-layout folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) or an s3:// URI "
                   "of one with weights=... or RASR_SD_BASE, or a Hugging Face id where the hub is reachable",
    "OSEDiff LoRA": "download osediff.pkl (github.com/cswry/OSEDiff release) and pass osediff_weights=PATH or set "
                    "RASR_OSEDIFF_WEIGHTS (the .pkl, or the folder written by osediff_pkl_to_safetensors)",
    "RefDSR branch": f"pass refdsr_weights=FOLDER or set RASR_REFDSR_WEIGHTS (a folder with {BRANCH_FILE} + "
                     f"{BRANCH_META}, written by RefDSR.save_branch after training)",
}


def _file_missing(ref: str | None) -> str | None:
    if not ref:
        return "not given"
    if storage.is_remote(ref):
        return None if storage.exists(ref) else f"{storage.redact(ref)} not found"
    return None if os.path.exists(ref) else f"{ref} does not exist"


def build_model(name: str, weights: str | None = None, osediff_weights: str | None = None,
                refdsr_weights: str | None = None, new_branch: bool = False,
                branch_config: BranchConfig | None = None) -> tuple[OneStepSR, str]:
    """Load "osediff" or "refdsr" (fp32, CPU) and its weights id; new_branch=True starts a fresh branch (training)."""
    refs = {"SD-2.1-base": weights or os.environ.get("RASR_SD_BASE") or sdlib.DEFAULT_SD_BASE,
            "OSEDiff LoRA": osediff_weights or os.environ.get("RASR_OSEDIFF_WEIGHTS"),
            "RefDSR branch": refdsr_weights or os.environ.get("RASR_REFDSR_WEIGHTS")}
    needed = ["SD-2.1-base", "OSEDiff LoRA"] + (["RefDSR branch"] if name == "refdsr" and not new_branch else [])
    missing = {}
    for part in needed:
        reason = sdlib.missing_reason(refs[part]) if part == "SD-2.1-base" else _file_missing(refs[part])
        if reason:
            missing[part] = reason
    if missing:
        lines = [f"  - {part}: {why}; {HOW[part]}" for part, why in missing.items()]
        raise wts.WeightsNotFound(f"{name} cannot load: {len(missing)} weight part(s) missing\n" + "\n".join(lines))

    comps = sdlib.load(refs["SD-2.1-base"])
    ose = read_osediff(refs["OSEDiff LoRA"])
    ids = [comps.weights_id, ose.weights_id]
    files = {**(comps.files or {}), **ose.files}
    if is_sd21_base(comps.unet):  # the released checkpoint's exact names and shapes, before touching the model
        check_keys(ose)
    ref_vae = copy.deepcopy(comps.vae) if name == "refdsr" else None  # before OSEDiff's encoder LoRA goes in
    apply_osediff(comps.unet, comps.vae, ose)
    if name == "osediff":
        model: OneStepSR = OneStepSR(comps)
    else:
        cfg, state = (branch_config or BranchConfig(), None) if new_branch else read_branch(refs["RefDSR branch"])
        model = RefDSR(comps, ref_vae, cfg)
        ids.append(model.load_branch_tensors(state) if state is not None else "new-branch")
        if state is not None:
            files.update(wts.file_sha256s(wts.localize(refs["RefDSR branch"]), "refdsr"))
    model.weights_files = files  # what a manifest row records beside weights_id
    return model, hashlib.sha256("|".join(ids).encode()).hexdigest()[:16]


class DiffusionGenerator(Generator):
    """`osediff` / `refdsr` behind the Generator interface: x4, tiles internally, any batch size.

    Units: `tile_size` / `tile_overlap` count output (HR) pixels, the SD model's input after the x4
    upsampling (its latent tiles are 8x smaller); the Restorer's `tile` / `overlap` (--tile,
    --tile-overlap) count input (LR) pixels and do not apply here (`tiles_internally`).

    Defaults are those of OSEDiff's inference script (test_osediff.py): latent tiles of 96 latents (768 px)
    overlapping by 32 (256 px); inputs shorter than 128 px enlarged to 128 first (`min_side`, done by the
    Restorer); the x4 upsampling with PIL's bicubic. Its VAE tiles (1024 px encoder, 224-latent decoder)
    share GroupNorm statistics across tiles; diffusers' VAE tiling does not, so tone seams can appear at
    tile borders: here the VAE is tiled only above `vae_tile_size` (2048 px), so outputs up to 2048 px
    are never VAE-tiled."""

    scale = 4
    tiles_internally = True
    min_side = 128  # OSEDiff: process_size 512 // upscale 4

    def __init__(self, name: str, model: OneStepSR, weights_id: str, device=None, dtype: str = "fp32",
                 fusion_scale: float = 0.5, tile_size: int = 768, tile_overlap: int = 256,
                 seed: int | None = None, tagger="category", vae_tile_size: int = 2048,
                 weights_files: dict[str, str] | None = None):
        from rasr.restoration.tagger import get_tagger

        m = model.hr_multiple
        if tile_size % m or not 0 <= tile_overlap < tile_size // 2 or tile_overlap % model.vae_scale:
            raise ValueError(f"tile_size={tile_size} must be a multiple of {m} and tile_overlap={tile_overlap} a "
                             f"multiple of {model.vae_scale} under half the tile")
        self.name, self.weights_id = name, weights_id
        self.uses_reference = name == "refdsr"
        self.pad_multiple = m // self.scale  # 16: the x4 image must split into whole UNet features
        self.device = pick_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        self.model = model.to(self.device, self.dtype).eval()
        self.fusion_scale, self.tile_size, self.tile_overlap, self.seed = fusion_scale, tile_size, tile_overlap, seed
        self.vae_tile_size = vae_tile_size
        self.weights_files = dict(weights_files or {})
        self.tagger = get_tagger(tagger)
        for vae in (model.vae, getattr(model, "ref_vae", None)):
            if vae is not None:  # diffusers VAE tiling, active only above vae_tile_size pixels
                vae.enable_tiling()
                vae.tile_sample_min_size = vae_tile_size
                vae.tile_latent_min_size = vae_tile_size // model.vae_scale

    def restore(self, lr: torch.Tensor, ref: torch.Tensor | None, prompts: list[str] | None = None) -> torch.Tensor:
        """lr (B, 3, h, w) in [0, 1], sides multiples of pad_multiple -> (B, 3, 4h, 4w) in [0, 1]."""
        b, _, h, w = lr.shape
        if h % self.pad_multiple or w % self.pad_multiple:
            raise ValueError(f"{self.name} needs LR sides that are multiples of {self.pad_multiple}, got {h}x{w}: "
                             f"run it through rasr.restoration.generators.Restorer, which pads")
        prompts = list(prompts) if prompts is not None else [""] * b
        if len(prompts) != b:
            raise ValueError(f"{b} images but {len(prompts)} prompts")
        x = resize_pil(lr, (h * self.scale, w * self.scale)).to(self.device) * 2 - 1  # as upstream: PIL bicubic
        text = self.model.text_embeddings(prompts)
        gen = None if self.seed is None else torch.Generator(self.device).manual_seed(self.seed)
        kw = {}
        if self.uses_reference and ref is not None:
            kw = {"ref": ref.to(self.device).float() * 2 - 1, "fusion_scale": self.fusion_scale}
        y = self.model.restore(x, text, self.tile_size // self.model.vae_scale,
                               self.tile_overlap // self.model.vae_scale, generator=gen, **kw)
        return ((y.float() + 1) / 2).clamp(0, 1)

    def prompt_for(self, lr, lr_category: str | None, ref=None, ref_category: str | None = None) -> str:
        """Tag the LR (as the model sees it, upscaled) and the reference, and build the prompt (see `prompt`)."""
        lr_tags = self.tagger.tags([lr], categories=[lr_category or None], scale=self.scale)[0]
        ref_tags = self.tagger.tags([ref], categories=[ref_category or None])[0] if ref is not None else ""
        return self.prompt(lr_tags, ref_tags)

    def prompt(self, lr_tags: str, ref_tags: str = "") -> str:
        """The text prompt: OSEDiff's own format for `osediff` ("<tags>, <user prompt>," with no user prompt),
        tags of the LR then of the reference for `refdsr` (the RASR paper)."""
        from rasr.restoration.tagger import build_prompt, osediff_prompt

        return build_prompt(lr_tags, ref_tags) if self.uses_reference else osediff_prompt(lr_tags)

    def info(self) -> dict:
        """Tagger, fusion scale, precision, tiling, latent mode and weights id: what changes the output."""
        return {"tagger": self.tagger.name, "fusion_scale": self.fusion_scale if self.uses_reference else None,
                "precision": self.precision, "tile_size": self.tile_size, "tile_overlap": self.tile_overlap,
                "vae_tile_size": self.vae_tile_size, "min_side": self.min_side, "upsample": "pil-bicubic",
                "latent": "mode" if self.seed is None else f"sample(seed={self.seed})", "weights_id": self.weights_id}


OPTIONS = ("osediff_weights", "refdsr_weights", "fusion_scale", "tile_size", "tile_overlap", "seed", "tagger",
           "vae_tile_size")


def load_diffusion_generator(name: str, weights: str | None = None, device: str | None = None,
                             dtype: str = "fp32", **options) -> DiffusionGenerator:
    """Build `osediff` or `refdsr` with its weights (SD base: `weights`; the rest: options or RASR_* env vars)."""
    if name not in ("osediff", "refdsr"):
        raise ValueError(f"unknown diffusion generator {name!r}: choose osediff or refdsr")
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} for {name}: choose from {', '.join(OPTIONS)}")
    model, weights_id = build_model(name, weights, options.pop("osediff_weights", None),
                                    options.pop("refdsr_weights", None))
    if isinstance(model, RefDSR):
        model.fuse_branch()  # inference only: fold the branch LoRA in, as OSEDiff's is
    return DiffusionGenerator(name, model, weights_id, device=device, dtype=dtype,
                              weights_files=model.weights_files, **options)
