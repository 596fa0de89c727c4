"""Prompt taggers: the text half of RefDSR's conditioning (prompt = tags of the LR + tags of the reference).

    tagger = get_tagger("category")                       # "none" | "category" | "ram:/path/to/ram.pt2"
    lr_tags = tagger.tags(lr_images)                      # one comma-separated string per image
    ref_tags = tagger.tags(ref_images, categories=["tabby cat"])
    prompt = build_prompt(lr_tags[0], ref_tags[0])        # "tabby cat, grass"

The paper tags with RAM (OSEDiff uses DAPE, a RAM fine-tune). No PyPI package ships RAM or DAPE, so
`RamTagger` runs a user-provided export of it: a `torch.export` program (.pt2, batch dimension dynamic) or a
TorchScript module (.ts/.pt), (B, 3, S, S) ImageNet-normalised -> (B, N) logits, plus a text file with the N tag
names, one per line (RAM's tag list), beside it as <name>.txt, and RAM's per-class thresholds, one per line, as
<name>_threshold.txt (RAM ships them as ram_tag_list_threshold.txt). Without the export or the tag list it
raises: it is never faked. As RAM's `generate_tag`, a tag is on when sigmoid(logit) > its class threshold
(strictly), and the image is the x4-upscaled LR resized to 384 x 384 (bilinear, antialiased) as OSEDiff feeds it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rasr import weights as wts
from rasr.restoration.images import IMAGENET_MEAN, IMAGENET_STD, resize_pil, to_tensor


def _split(tags: str | Sequence[str] | None) -> list[str]:
    if not tags:
        return []
    parts = tags.split(",") if isinstance(tags, str) else list(tags)
    return [p.strip() for p in parts if p and p.strip()]


def osediff_prompt(lr_tags: str, user_prompt: str = "") -> str:
    """OSEDiff's inference prompt, character for character: f"{tags}, {user prompt},"."""
    return f"{lr_tags}, {user_prompt},"


def build_prompt(lr_tags: str | Sequence[str] | None, ref_tags: str | Sequence[str] | None) -> str:
    """Tags of the LR then tags of the reference, de-duplicated in order, joined with ", "."""
    seen: dict[str, None] = {}
    for t in _split(lr_tags) + _split(ref_tags):
        seen.setdefault(t.lower(), None)
    return ", ".join(seen)


class Tagger(abc.ABC):
    """`tags(images, categories=None) -> list[str]`: one comma-separated tag string per (H, W, 3) uint8 image."""

    name = ""

    @abc.abstractmethod
    def tags(self, images: Sequence[np.ndarray], categories: Sequence[str | None] | None = None,
             scale: int = 1) -> list[str]:
        """One comma-separated tag string per image (categories: what the caller knows, per image; scale: the
        generator's upscale, for taggers that look at the image as the generator sees it)."""


class NullTagger(Tagger):
    """No tags: the empty prompt (`none`; `null` is the same tagger under its older name)."""

    name = "null"  # kept: it is recorded in manifests and config hashes

    def tags(self, images, categories=None, scale: int = 1) -> list[str]:
        return [""] * len(images)


class CategoryTagger(Tagger):
    """The gallery category the caller passes per image (folder names: "golden_retriever" -> "golden retriever")."""

    name = "category"

    def tags(self, images, categories=None, scale: int = 1) -> list[str]:
        cats = list(categories) if categories is not None else [None] * len(images)
        if len(cats) != len(images):
            raise ValueError(f"{len(images)} images but {len(cats)} categories")
        return [(c or "").replace("_", " ").replace("-", " ").strip() for c in cats]


class RamTagger(Tagger):
    """RAM/DAPE-style multi-label tagger from a user-provided TorchScript export and its tag list."""

    name = "ram"

    def __init__(self, weights: str | None = None, tag_list: str | None = None, threshold: float = 0.68,
                 image_size: int = 384, device: str | None = None, thresholds: str | None = None):
        weights = weights or os.environ.get("RASR_RAM_WEIGHTS")
        if not weights:
            raise wts.WeightsNotFound(
                "RAM tagger unavailable: no weights given. Export RAM/DAPE with torch.export (.pt2) or TorchScript "
                "((B, 3, 384, 384) ImageNet-normalised -> (B, N) logits) and pass ram:/path/to/model.pt2 or set "
                "RASR_RAM_WEIGHTS, with the tag names one per line in model.txt beside it; or use the 'category' "
                "or 'null' tagger")
        path = wts.localize(weights)
        tag_list = tag_list or os.path.splitext(path)[0] + ".txt"
        if not os.path.exists(tag_list):
            raise wts.WeightsNotFound(f"RAM tag list {tag_list} not found: give one tag name per output, one per line")
        with open(tag_list) as f:
            self.tag_names = [line.strip() for line in f if line.strip()]
        # RAM's per-class thresholds (values above max_threshold 0.9 are kept, so each is used as written);
        # without the file every class gets RAM's default threshold
        thresholds = thresholds or os.path.splitext(tag_list)[0] + "_threshold.txt"
        self.class_threshold = torch.full((len(self.tag_names),), float(threshold))
        self.thresholds_file = thresholds if os.path.exists(thresholds) else None
        if self.thresholds_file:
            with open(thresholds) as f:
                values = [float(line) for line in f if line.strip()]
            if len(values) != len(self.tag_names):
                raise ValueError(f"{thresholds} has {len(values)} thresholds for {len(self.tag_names)} tags in {tag_list}")
            self.class_threshold = torch.tensor(values, dtype=torch.float32)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # both formats hold a traced graph and tensors, not pickled Python objects
        if path.endswith(".pt2"):
            self.model = torch.export.load(path).module().to(self.device)
        else:
            self.model = torch.jit.load(path, map_location=self.device).eval()
        self.threshold, self.image_size = threshold, image_size

    @torch.no_grad()
    def tags(self, images, categories=None, scale: int = 1) -> list[str]:
        if not images:
            return []
        x = torch.cat([self._input(im, scale) for im in images]).to(self.device)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        probs = torch.sigmoid(self.model((x - mean) / std).float())  # (B, N)
        if probs.shape[-1] != len(self.tag_names):
            raise ValueError(f"tagger outputs {probs.shape[-1]} scores but its tag list has {len(self.tag_names)}")
        on = probs > self.class_threshold.to(probs.device)  # strictly above, as RAM
        return [", ".join(self.tag_names[j] for j in torch.nonzero(row).flatten().tolist()) for row in on]

    def _input(self, img: np.ndarray, scale: int) -> torch.Tensor:
        """(1, 3, S, S) in [0, 1]: upscaled x scale with PIL's bicubic, then to S x S as torchvision's Resize."""
        x = to_tensor(img)
        if scale > 1:
            x = resize_pil(x, (x.shape[-2] * scale, x.shape[-1] * scale))
        return F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)


def get_tagger(spec: str | Tagger | None) -> Tagger:
    """A tagger by name: "none" (or "null"), "category" or "ram[:path]" (or a Tagger, returned as is)."""
    if isinstance(spec, Tagger):
        return spec
    spec = spec or "null"
    if spec in ("none", "null"):
        return NullTagger()
    if spec == "category":
        return CategoryTagger()
    if spec == "ram" or spec.startswith("ram:"):
        return RamTagger(spec[4:] or None)
    raise ValueError(f"unknown tagger {spec!r}: choose none, category or ram:/path/to/model.pt2")
