"""Image decoding and encoding with the checks an archive needs.

Every photo is turned into 8-bit RGB (H, W, 3) with its EXIF orientation applied; an alpha channel
is kept aside and upscaled separately; grayscale inputs are written back as grayscale. Anything we
cannot read raises ImageError with a reason a person can act on.

Also the one conversion between such arrays and the models' (1, 3, H, W) tensors in [0, 1]
(`to_tensor`, `to_uint8`), and `DecodedCache`, decoded images by URI (references, training crops).
"""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rasr import storage

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_MAX_PIXELS = 40_000_000  # input pixels; a x4 output of this is 640 MP

# The normalisation ImageNet-trained backbones expect (encoders, the tagger, the losses' VGG16 and DINOv2)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# We enforce our own limit before decoding; PIL's bomb check would fire with a less useful message.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is the reason recorded in manifests."""


@dataclass
class Decoded:
    rgb: np.ndarray            # (H, W, 3) uint8, orientation applied
    alpha: np.ndarray | None   # (H, W) uint8 or None
    grayscale: bool            # the source had no colour
    source_mode: str           # PIL mode of the file, e.g. "CMYK", "I;16"
    frames: int = 1            # frames in the file (animated GIF/WebP, multi-page TIFF): the first is used
    notes: tuple[str, ...] = ()  # what was done that the user should know (recorded in the manifest)

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit single-channel images: scale to 8 bit instead of clipping."""
    arr = np.asarray(img)
    if arr.dtype == np.uint16 or img.mode.startswith("I;16"):
        arr = (arr.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)
    elif img.mode in ("I", "F"):
        arr = arr.astype(np.float32)
        hi = 65535.0 if arr.max() > 255 else 255.0
        arr = (arr / hi * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode bytes into RGB + optional alpha, applying EXIF orientation and the pixel limit."""
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format (the content is not an image)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken headers
        raise ImageError(f"cannot open image: {e}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} = {width * height:,} pixels is above the limit of {max_pixels:,}: "
            f"raise --max-pixels or downscale the file")
    if width < 1 or height < 1:
        raise ImageError(f"invalid size {width}x{height}")
    frames = int(getattr(img, "n_frames", 1) or 1)
    notes = []
    if frames > 1:
        notes.append(f"{frames} frames (animated or multi-page): the first frame was enhanced, the others were not")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
    except OSError as e:
        raise ImageError(f"corrupt or truncated image data: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types for broken data: one ImageError
        raise ImageError(f"cannot decode image: {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = ImageOps.exif_transpose(img)
    except Exception as e:  # noqa: BLE001 - a broken EXIF block must not cost the photo
        notes.append(f"EXIF unreadable ({e.__class__.__name__}): orientation not applied")

    mode = img.mode
    alpha = None
    grayscale = False
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
        grayscale = True
    elif mode in ("L", "1"):
        grayscale = True
    elif mode in ("LA", "La"):
        alpha = np.asarray(img.getchannel("A")).copy()
        grayscale = True
    elif mode == "P":
        img = img.convert("RGBA")
        a = np.asarray(img.getchannel("A"))
        alpha = a.copy() if (a < 255).any() else None
    elif mode in ("RGBA", "RGBa"):
        alpha = np.asarray(img.getchannel("A")).copy()
    rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    return Decoded(rgb=rgb, alpha=alpha, grayscale=grayscale, source_mode=mode, frames=frames, notes=tuple(notes))


# libjpeg's quality-50 luminance table: a file's table is this scaled by 50/q (q < 50) or (2 - q/50)
_JPEG_LUMA_50 = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                          14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                          92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def jpeg_quality(data: bytes) -> int | None:
    """The libjpeg quality a JPEG was saved at, estimated from its luminance table (None: not a JPEG)."""
    try:
        img = Image.open(io.BytesIO(data))
        tables = getattr(img, "quantization", None) if img.format == "JPEG" else None
    except Exception:  # noqa: BLE001 - an estimate only: unreadable tables mean "unknown"
        return None
    if not tables or 0 not in tables:
        return None
    scale = float(np.mean(np.asarray(tables[0], np.float64)) / _JPEG_LUMA_50.mean() * 100)
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return int(round(min(100, max(1, quality))))


OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "webp-lossless": "WEBP"}
LOSSY_FORMATS = ("jpg", "jpeg", "webp")
# Chosen by bench/encoding.py on real 512 px outputs (docs/PERFORMANCE.md): zlib level 1 writes PNGs
# several times faster than level 6 for files a few per cent larger; every level decodes to the same pixels.
DEFAULT_PNG_LEVEL = 1
DEFAULT_QUALITY = 95


def is_lossy(fmt: str) -> bool:
    return fmt.lower() in LOSSY_FORMATS


@dataclass(frozen=True)
class Encoding:
    """How outputs are written: format plus its one knob (PNG zlib level, or JPEG/WebP quality)."""

    format: str = "png"
    png_level: int = DEFAULT_PNG_LEVEL
    quality: int = DEFAULT_QUALITY

    def __post_init__(self):
        fmt = self.format.lower()
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"PNG compress level must be 0-9, got {self.png_level}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1-100, got {self.quality}")
        object.__setattr__(self, "format", fmt)

    @property
    def extension(self) -> str:
        """File extension of outputs (webp-lossless files are .webp)."""
        return "webp" if self.format == "webp-lossless" else self.format

    def save_options(self) -> dict:
        pil = OUTPUT_FORMATS[self.format]
        if self.format == "webp-lossless":
            return {"lossless": True, "quality": 100, "method": 1}  # method 1: fast, still lossless
        if pil in ("JPEG", "WEBP"):
            return {"quality": self.quality}
        return {"compress_level": self.png_level}

    def describe(self, alpha: bool = False) -> str:
        """What the manifest records, e.g. 'png level=1', 'jpg quality=95'."""
        if self.format == "png":
            text = f"png level={self.png_level}"
        elif self.format == "webp-lossless":
            text = "webp lossless"
        else:
            text = f"{self.format} quality={self.quality}"
        return text + (" +alpha" if alpha and OUTPUT_FORMATS[self.format] != "JPEG" else "")


def encode_image(rgb: np.ndarray, fmt: "str | Encoding" = "png", alpha: np.ndarray | None = None,
                 grayscale: bool = False, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode (H, W, 3) uint8 (+ alpha) to PNG/JPEG/WebP bytes; `fmt` is a format name or an Encoding."""
    enc = fmt if isinstance(fmt, Encoding) else Encoding(fmt, quality=quality)
    img = Image.fromarray(rgb, mode="RGB")
    if grayscale:
        img = img.convert("L")
    if alpha is not None and OUTPUT_FORMATS[enc.format] != "JPEG":
        img.putalpha(Image.fromarray(alpha, mode="L"))
    buf = io.BytesIO()
    img.save(buf, format=OUTPUT_FORMATS[enc.format], **enc.save_options())
    return buf.getvalue()


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale an alpha channel to the output size (bicubic, clipped)."""
    return np.asarray(Image.fromarray(alpha, mode="L").resize((width, height), Image.BICUBIC))


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Shortcut: decoded RGB array of an image's bytes."""
    return decode_image(data, max_pixels=max_pixels).rgb


def to_tensor(rgb: np.ndarray) -> "torch.Tensor":
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1] (a copy: decoded photos may be read-only)."""
    import torch  # here, not at the top: decoding and encoding need no torch

    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255)


def to_uint8(x: "torch.Tensor") -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 (clamped, rounded, not truncated)."""
    return x.detach().float().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def resize_pil(x: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    """(B, C, H, W) in [0, 1] -> (B, C, h, w) resized with PIL's bicubic, as OSEDiff resizes its input.

    PIL's bicubic (a = -0.5, antialiased when shrinking) is not torch's (a = -0.75): the diffusion models
    see exactly what upstream feeds them. 8-bit values go through PIL's RGB path, which rounds after each
    of its two passes as upstream's does; other values through its float mode, one channel at a time."""
    import torch

    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = []
    for img in x.detach().float().clamp(0, 1).cpu():
        q = img.mul(255).round()
        if img.shape[0] == 3 and torch.equal(q.div(255), img):
            arr = np.asarray(Image.fromarray(q.byte().permute(1, 2, 0).numpy()).resize((w, h), Image.BICUBIC))
            out.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255))
        else:
            planes = [Image.fromarray(np.ascontiguousarray(c.numpy(), dtype=np.float32)) for c in img]  # mode "F"
            chans = [np.asarray(p.resize((w, h), Image.BICUBIC)) for p in planes]
            out.append(torch.from_numpy(np.stack(chans)).clamp(0, 1))
    return torch.stack(out).to(x.device)


class DecodedCache:
    """Decoded images by URI (references, training crops), the least recently used dropped beyond
    `max_items` (None: keep all); `max_side` bounds the long side of what is kept (bicubic)."""

    def __init__(self, max_items: int | None = None, max_side: int | None = None):
        self.max_items, self.max_side = max_items, max_side
        self._rgb: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, uri: str) -> np.ndarray:
        """(H, W, 3) uint8 of the image at `uri`, read and decoded (no pixel limit) on first use."""
        if uri not in self._rgb:
            rgb = decode_image(storage.read_bytes(uri), max_pixels=1 << 62).rgb
            h, w = rgb.shape[:2]
            if self.max_side and max(h, w) > self.max_side:
                s = self.max_side / max(h, w)
                rgb = np.asarray(Image.fromarray(rgb).resize((round(w * s), round(h * s)), Image.BICUBIC))
            self._rgb[uri] = rgb
            while self.max_items is not None and len(self._rgb) > self.max_items:
                self._rgb.popitem(last=False)
        self._rgb.move_to_end(uri)
        return self._rgb[uri]


def thumbnail_jpeg(rgb: np.ndarray, size: int = 96) -> bytes:
    """A small JPEG for reports and artifacts."""
    img = Image.fromarray(rgb)
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()
