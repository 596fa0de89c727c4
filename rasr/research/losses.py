"""RefDSR's training losses, the paper's recipe: MSE + 2 LPIPS + 1e-3 Gram(VGG16) + 0.1 GAN(DINOv2).

    loss = TrainingLoss(LossWeights(), device="cuda")
    g, parts = loss.generator_loss(pred, gt)        # images (B, 3, H, W) in [-1, 1]; backprop g
    d, d_parts = loss.discriminator_loss(pred, gt)  # moves only loss.discriminator_parameters()

Offline first. No package ships the weights of the optional terms: LPIPS needs AlexNet and pyiqa's
linear layers, Gram needs torchvision's VGG16, GAN needs DINOv2 (Hugging Face id, folder or s3://).
A term whose files are missing is switched off with a warning that names the files and how to provide
them, and `status` / `config()` record it. Nothing is downloaded, except a DINOv2 Hugging Face id
while the hub is reachable (rasr.weights' rule for ids). Files that are present but wrong
(Python objects, other keys or shapes) raise instead: a broken file is a mistake to fix, not a term
to drop. A weight of 0 switches a term off without loading anything.

The unweighted values in `parts` (only terms that are on appear, plus "total"):
- mse: mean squared error of [-1, 1] images, in [0, 4].
- lpips: pyiqa's LPIPS v0.1 (AlexNet), batch mean; in [0, ~1], 0 for identical images.
- gram: relative Gram distance (see `gram_distance`), mean over relu1_2..relu4_3 and the batch; 0 for
  identical images, O(1) for unrelated textures.
- gan: hinge generator term -mean(D(pred)); any sign, so `total` can be negative.

Precision: inputs are cast to float32; under autocast the networks run in the autocast dtype while Gram
matrices and every returned value stay float32. Build it with the training device (device=...): pyiqa
pins its device when built.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rasr.research import metrics
from rasr import weights as W
from rasr.devices import pick_device
from rasr.restoration.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger("rasr.losses")

TERMS = ("mse", "lpips", "gram", "gan")
ON = "on"

# torchvision's ImageNet VGG16, as DISTS uses it (same file, same folder)
VGG16_FILE = next(f for f in metrics.REQUIRED_FILES["dists"] if f.name == "vgg16-397923af.pth")
VGG_LAYERS = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3", 22: "relu4_3"}  # index in vgg16().features
GRAM_EPS = 1e-8

# DINOv2 ViT-S/14: the backbone of ADD's discriminator; 22M params, so D costs little next to SD.
DINO_DEFAULT = "facebook/dinov2-small"
DINO_SIZE = 224  # DINOv2's training crop; 224 / 14 = 16 x 16 patch tokens
DINO_TAPS = 4  # hidden layers read by the heads, evenly spaced: ViT-S/14 (12 blocks) -> 3, 6, 9, 12
HEAD_WIDTH = 128


@dataclass(frozen=True)
class LossWeights:
    """The paper's weights; 0 switches a term off."""

    mse: float = 1.0
    lpips: float = 2.0
    gram: float = 1e-3
    gan: float = 0.1


PAPER_WEIGHTS = LossWeights()


class Unavailable(Exception):
    """A loss's weights are missing; the message says which files and how to provide them."""


# ---- Gram (VGG16) --------------------------------------------------------------------------------

def gram_matrix(feat: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features -> (B, C, C) Gram matrices F F^T / (C H W), in float32."""
    B, C, H, W = feat.shape
    with torch.autocast(feat.device.type, enabled=False):  # bf16 sums of H*W products lose too much
        f = feat.float().reshape(B, C, H * W)
        return f @ f.transpose(1, 2) / (C * H * W)


def gram_distance(fx: torch.Tensor, fy: torch.Tensor, eps: float = GRAM_EPS) -> torch.Tensor:
    """Per sample ||G(x) - G(y)||_F^2 / (||G(y)||_F^2 + eps) for features of one layer: (B,).

    Why relative: scaling a layer's activations by s scales numerator and denominator alike (s^4), so
    each layer contributes O(1) whatever its activation scale, where a plain ||dG||^2 (x s^4) or mean
    |dG| (x s^2) lets the strongest-firing layer drown the others and ties the right loss weight to the
    checkpoint. Normalised by the target's Gram, not a symmetric mean: the denominator is a constant for
    the generator, which cannot lower the loss by inflating its own features. 0 for equal Grams, exactly
    1 when x's features are all zero, O(1) for unrelated textures. y is the target (gt)."""
    gx, gy = gram_matrix(fx), gram_matrix(fy)
    return (gx - gy).square().sum((1, 2)) / (gy.square().sum((1, 2)) + eps)


class VggGram(nn.Module):
    """The paper's Gram loss (its Eq. 4) on torchvision VGG16 relu1_2, relu2_2, relu3_3, relu4_3."""

    def __init__(self, state: dict[str, torch.Tensor], source: str):
        super().__init__()
        import torchvision

        with torch.device("meta"):  # shapes only: the 120M-value classifier is never built
            features = torchvision.models.vgg16(weights=None).features[:max(VGG_LAYERS) + 1]
        wanted = {}
        for key in features.state_dict():
            if "features." + key not in state:
                raise ValueError(f"{source} is not a torchvision vgg16 state dict (no 'features.{key}'): "
                                 f"use torchvision's {VGG16_FILE.name} from {VGG16_FILE.url}")
            wanted[key] = state["features." + key].float()
        try:
            features.load_state_dict(wanted, assign=True)
        except RuntimeError as e:
            raise ValueError(f"{source} does not fit torchvision's vgg16 ({e}): use {VGG16_FILE.url}") from None
        self.features = features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[-1, 1] images (B, 3, H, W) -> the 4 feature maps, (B, 64, H, W) ... (B, 512, H/8, W/8)."""
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG_LAYERS:
                out.append(h)
        return out

    def layer_distances(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """gram_distance per sample and layer: (B, 4)."""
        with torch.no_grad():
            targets = self.layer_features(gt)
        return torch.stack([gram_distance(fx, fy) for fx, fy in zip(self.layer_features(pred), targets)], 1)

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        return self.layer_distances(pred, gt).mean()  # mean, not sum: reads as one layer's distance


def load_vgg_gram(ref: str | None = None) -> VggGram:
    """VggGram from `ref` (file or s3://), default torchvision's file under $TORCH_HOME/hub/checkpoints."""
    if ref is None:
        reason = metrics.check_files((VGG16_FILE,))
        if reason != metrics.OK:
            raise Unavailable(reason.removeprefix("unavailable: ") + "; or pass vgg_weights=PATH")
        ref = os.path.join(metrics.folder_path(VGG16_FILE.folder), VGG16_FILE.name)
    try:
        path = W.localize(ref)
    except W.WeightsNotFound as e:
        raise Unavailable(f"VGG16 {e}") from None
    if not os.path.isfile(path):
        raise Unavailable(f"VGG16 weights {ref} not found: give torchvision's {VGG16_FILE.name} "
                          f"(from {VGG16_FILE.url}) as vgg_weights=PATH or s3:// URI")
    return VggGram(W.load_state_dict(path), source=ref)


# ---- GAN: frozen DINOv2 + trainable heads --------------------------------------------------------

class Head(nn.Module):
    """Patch tokens of one layer (B, N, D) on an h x w grid -> one logit per token (B, N)."""

    def __init__(self, dim: int, width: int = HEAD_WIDTH):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm  # Lipschitz heads, no batch statistics (DDP-safe)
        self.norm = nn.LayerNorm(dim)  # token norms grow with depth, a few outlier tokens far more
        self.convs = nn.Sequential(
            sn(nn.Conv2d(dim, width, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, width, 3, padding=1)), nn.LeakyReLU(0.2),  # neighbouring patches
            sn(nn.Conv2d(width, 1, 1)),
        )

    def forward(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, D = tokens.shape  # (batch, grid^2 patch tokens, hidden size)
        x = self.norm(tokens).transpose(1, 2).reshape(B, D, h, w)
        return self.convs(x).flatten(1)


class DinoDiscriminator(nn.Module):
    """DINOv2 kept frozen (eval, no grad to its weights, grad still flows to the image) + one Head per
    tapped layer, as in Vision-aided GAN and ADD. Logits per patch token of every tapped layer."""

    def __init__(self, backbone: nn.Module, size: int = DINO_SIZE, taps: int = DINO_TAPS):
        super().__init__()
        cfg = backbone.config
        self.backbone = backbone.requires_grad_(False).eval()
        self.size, self.grid = size, size // cfg.patch_size
        L = cfg.num_hidden_layers
        self.taps = sorted({max(1, round(L * (i + 1) / taps)) for i in range(taps)})  # hidden_states index
        self.heads = nn.ModuleList(Head(cfg.hidden_size) for _ in self.taps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[-1, 1] images (B, 3, H, W) -> patch tokens (B, grid^2, D) of each tapped layer."""
        x = F.interpolate((x + 1) / 2, size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=True)  # antialias: 768 px crops go down 3.4x
        out = self.backbone(pixel_values=(x - self.mean) / self.std, output_hidden_states=True)
        return [out.hidden_states[i][:, 1:] for i in self.taps]  # drop CLS; hidden_states[0] = embeddings

    def logits(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Tokens of the tapped layers -> logits (B, taps * grid^2); > 0 reads "real"."""
        return torch.cat([head(t, self.grid, self.grid) for head, t in zip(self.heads, tokens)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.tokens(x))


def load_dino_discriminator(ref: str | None = None) -> DinoDiscriminator:
    """DinoDiscriminator on DINOv2 from a Hugging Face id, local folder or s3:// URI (default dinov2-small)."""
    from transformers import Dinov2Model

    ref = ref or DINO_DEFAULT
    how = (f"download it on a machine with hub access (`huggingface-cli download {DINO_DEFAULT}`) and "
           f"pass the folder, or an s3:// copy, as dino_weights")
    try:
        local = W.localize(ref)
    except W.WeightsNotFound as e:
        raise Unavailable(f"DINOv2 {e}; or {how}") from None
    # transformers reads HF_HUB_OFFLINE once, at import: ask for cached files only when the hub is
    # unreachable, else a missing model retries for ~45 s before failing.
    offline = W.looks_like_hf_id(local) and not W.hub_reachable()
    try:
        backbone = Dinov2Model.from_pretrained(local, dtype=torch.float32, local_files_only=offline)
    except OSError as e:
        raise Unavailable(f"DINOv2 weights not found at {ref!r} ({str(e).splitlines()[0]}): {how}") from None
    return DinoDiscriminator(backbone)


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Forward through `module` without recording grads for its parameters (G step through D)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ---- the training loss ---------------------------------------------------------------------------

class TrainingLoss(nn.Module):
    """Generator and discriminator losses of RefDSR training; `status` says which terms are on, and why not."""

    def __init__(self, weights: LossWeights = PAPER_WEIGHTS, device=None, vgg_weights: str | None = None,
                 dino_weights: str | None = None):
        super().__init__()
        for term in TERMS:
            if getattr(weights, term) < 0:
                raise ValueError(f"loss weight {term}={getattr(weights, term)} is negative: use 0 to switch it off")
        if all(getattr(weights, t) == 0 for t in TERMS):
            raise ValueError("all loss weights are 0: nothing to train; keep at least mse > 0")
        self.weights = weights
        self.device = pick_device(device)
        self.sources = {  # what each term loads, recorded by config()
            "lpips": ", ".join(os.path.join(metrics.folder_path(f.folder), f.name)
                               for f in metrics.REQUIRED_FILES["lpips"]),
            "gram": vgg_weights or os.path.join(metrics.folder_path(VGG16_FILE.folder), VGG16_FILE.name),
            "gan": dino_weights or DINO_DEFAULT,
        }
        self.status: dict[str, str] = {"mse": ON if weights.mse else "off: weight 0"}  # MSE needs no weights
        self.lpips = self._switch("lpips", self._load_lpips)
        self.gram = self._switch("gram", lambda: load_vgg_gram(vgg_weights))
        self.disc = self._switch("gan", lambda: load_dino_discriminator(dino_weights))
        if ON not in self.status.values():
            raise ValueError(f"no loss term is on ({self.status}): provide the missing weights or set mse > 0")
        self.to(self.device)
        self.train()

    def _switch(self, term: str, load):
        if getattr(self.weights, term) == 0:
            self.status[term] = "off: weight 0"
            log.info(f"{term} loss off: its weight is 0")
            return None
        try:
            module = load()
        except Unavailable as e:
            self.status[term] = f"off: {e}"
            log.warning(f"{term} loss off: {e}")
            return None
        self.status[term] = ON
        return module

    def _load_lpips(self) -> nn.Module:
        reason = metrics.check("lpips")
        if reason != metrics.OK:
            raise Unavailable("LPIPS weights: " + reason.removeprefix("unavailable: "))
        try:
            lpips = metrics.create_loss("lpips", self.device)
        except FileNotFoundError as e:  # a file REQUIRED_FILES misses: the download blocker names it
            raise Unavailable(f"LPIPS weights: {e}") from None
        return lpips.requires_grad_(False).eval()  # eval: pyiqa's LPIPS has dropout before each linear layer

    def train(self, mode: bool = True):
        """Heads follow `mode`; LPIPS, VGG16 and DINOv2 stay in eval (frozen, dropout off)."""
        super().train(mode)
        for frozen in (self.lpips, self.gram, self.disc.backbone if self.disc else None):
            if frozen is not None:
                frozen.eval()
        return self

    def generator_loss(self, pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the terms that are on; parts = each term unweighted + "total"."""
        _check_images(pred, gt)
        pred, gt = pred.float(), gt.detach().float()
        terms: dict[str, torch.Tensor] = {}
        if self.status["mse"] == ON:
            terms["mse"] = F.mse_loss(pred, gt)
        if self.lpips is not None:
            terms["lpips"] = self.lpips(pred, gt, normalize=False).float()  # False: already in [-1, 1]
        if self.gram is not None:
            terms["gram"] = self.gram(pred, gt)
        if self.disc is not None:
            with _frozen(self.disc.heads):  # the G step must not leave gradients on D's heads
                terms["gan"] = -self.disc(pred).float().mean()  # hinge generator loss
        weighted = [getattr(self.weights, t) * v for t, v in terms.items()]
        total = weighted[0] if len(weighted) == 1 else torch.stack(weighted).sum()
        return total, _parts(terms, total)

    def discriminator_loss(self, pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss of the heads, real = gt, fake = pred (detached here); unweighted. Zero when GAN is off."""
        if self.disc is None:
            return torch.zeros((), device=self.device), {"total": 0.0}
        _check_images(pred, gt)
        B = pred.shape[0]
        with torch.no_grad():  # the backbone is frozen and nothing flows back to the images
            tokens = self.disc.tokens(torch.cat([pred.detach(), gt.detach()]).float())
        logits = self.disc.logits(tokens).float()  # (2B, taps * grid^2)
        fake, real = logits[:B], logits[B:]
        terms = {"real": F.relu(1 - real).mean(), "fake": F.relu(1 + fake).mean()}
        total = terms["real"] + terms["fake"]
        return total, _parts(terms, total)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The trainable heads ([] when GAN is off); their state_dict keys all contain "heads"."""
        return list(self.disc.heads.parameters()) if self.disc is not None else []

    def config(self) -> dict:
        """Weights, status and sources of each term (JSON-ready), for the training run's record."""
        cfg = {"weights": asdict(self.weights), "status": dict(self.status),
               "sources": {t: s for t, s in self.sources.items() if self.status[t] == ON}}
        if self.gram is not None:
            cfg["gram"] = {"layers": list(VGG_LAYERS.values()), "distance": "||dG||^2 / ||G(gt)||^2, layer mean"}
        if self.disc is not None:
            cfg["gan"] = {"loss": "hinge", "backbone_layers": self.disc.taps, "input_size": self.disc.size}
        return cfg


def _check_images(pred: torch.Tensor, gt: torch.Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (B, 3, H, W) images "
                         f"of the same shape, in [-1, 1]")


def _parts(terms: dict[str, torch.Tensor], total: torch.Tensor) -> dict[str, float]:
    values = torch.stack([v.detach().float() for v in (*terms.values(), total)]).tolist()  # one device sync
    return dict(zip((*terms, "total"), values))
