"""Image decoding and encoding with the checks an archive needs.

Every photo is turned into 8-bit RGB (H, W, 3) with its EXIF orientation applied (for retrieval and
tagging), and, when the file holds more, a 16-bit copy that the models restore (`Decoded.pixels`); an
alpha channel is kept aside and upscaled separately; grayscale inputs are written back as grayscale.
The ICC profile and EXIF travel with the pixels to the output (the model runs on the encoded values, so
the output keeps the input's profile; CMYK, which has no RGB output, is converted to sRGB through its
profile). Anything we cannot read raises ImageError with a reason a person can act on.

Also the one conversion between such arrays and the models' (1, 3, H, W) tensors in [0, 1]
(`to_tensor`, `to_uint8`), and `DecodedCache`, decoded images by URI (references, training crops).
"""

from __future__ import annotations

import io
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from rasr import storage
from rasr.options import DEFAULT_MAX_PIXELS
from rasr.restoration import formats

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} | formats.MORE_EXTENSIONS

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
    source_mode: str           # PIL mode of the file, e.g. "CMYK", "I;16" ("RAW" for camera RAW)
    frames: int = 1            # frames in the file (animated GIF/WebP, multi-page TIFF): the first is used
    notes: tuple[str, ...] = ()  # what was done that the user should know (recorded in the manifest)
    deep: np.ndarray | None = None  # (H, W, 3) uint16 when the file has more than 8 bits per channel
    icc: bytes | None = None   # the ICC profile the pixels are encoded in (None: untagged, sRGB assumed)
    color: str = "untagged (sRGB assumed)"  # what was done with the colour, for the manifest
    exif: bytes | None = None  # the file's EXIF (TIFF-structured), to carry to the output
    meta: object = None        # the file's XMP and IPTC (rasr.restoration.metadata.SourceMeta), set by the enhance worker
    source: bytes | None = None  # the file's bytes, kept by the enhance worker when it signs C2PA manifests

    @property
    def pixels(self) -> np.ndarray:
        """What the model restores: the 16-bit pixels when there are, else the 8-bit ones."""
        return self.deep if self.deep is not None else self.rgb

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def to_8bit(arr: np.ndarray) -> np.ndarray:
    """16-bit values (0-65535) -> 8-bit (rounded, clipped): the one conversion between the two depths."""
    return (arr.astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8)


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit single-channel images: scale to 8 bit instead of clipping."""
    arr = np.asarray(img)
    if arr.dtype == np.uint16 or img.mode.startswith("I;16"):
        arr = to_8bit(arr)
    elif img.mode in ("I", "F"):
        arr = arr.astype(np.float32)
        hi = 65535.0 if arr.max() > 255 else 255.0
        arr = (arr / hi * 255.0).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def profile_name(icc: bytes) -> str:
    """An ICC profile's description (what the manifest's `color` names)."""
    from PIL import ImageCms

    try:
        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip() or "unnamed profile"
    except Exception:  # noqa: BLE001 - a damaged profile is still carried, by its bytes
        return "unreadable profile"


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """EXIF orientation 2-8 applied to an (H, W, ...) array, as Pillow's exif_transpose does."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _exif_bytes(img: Image.Image) -> bytes | None:
    try:
        e = img.getexif()
        return e.tobytes()[6:] if len(e) else None
    except Exception:  # noqa: BLE001 - a broken EXIF block costs the metadata, never the photo
        return None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Decoded:
    """Decode bytes into RGB + optional alpha, applying EXIF orientation and the pixel limit.

    name: the file's name (its extension picks the camera RAW decoder and names a missing codec)."""
    if len(data) == 0:
        raise ImageError("empty file (0 bytes)")
    ext = os.path.splitext(name or "")[1].lower()
    missing = formats.missing_codec(ext) if ext else None
    if missing:
        raise ImageError(missing)
    if ext in formats.RAW_EXTENSIONS:
        return _decode_raw(data, max_pixels)
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
    icc = img.info.get("icc_profile") or None
    exif = _exif_bytes(img)
    alpha = None
    grayscale = False
    deep = None
    if formats.is_16bit_rgb(data):  # Pillow would read it as 8 bits: OpenCV reads all 16
        try:
            deep, alpha16 = formats.decode_16bit_rgb(data)
            orientation = int(Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) or 1)
            deep = _orient(deep, orientation)
            alpha = _orient(alpha16, orientation) if alpha16 is not None else None
        except Exception:  # noqa: BLE001 - OpenCV could not: keep Pillow's 8-bit reading
            deep = None
    if mode in ("I;16", "I;16B", "I;16L") and deep is None:
        gray16 = np.asarray(img).astype(np.uint16)
        deep = np.ascontiguousarray(np.repeat(gray16[..., None], 3, axis=-1))
        img = _to_8bit(img)
        grayscale = True
    elif mode in ("I", "F"):
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
    elif mode in ("RGBA", "RGBa") and alpha is None:
        alpha = np.asarray(img.getchannel("A")).copy()
    color = f"kept: {profile_name(icc)}" if icc else "untagged (sRGB assumed)"
    if mode == "CMYK" and icc:  # no CMYK output: converted to sRGB through the file's own profile
        from PIL import ImageCms

        try:
            img = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(), outputMode="RGB",
                                            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
            color, icc = f"converted to sRGB from CMYK ({profile_name(icc)})", srgb_profile()
        except Exception as e:  # noqa: BLE001 - a broken profile: Pillow's plain conversion, and say so
            notes.append(f"CMYK profile unusable ({e.__class__.__name__}): converted without it")
            color, icc = "CMYK converted without its profile (sRGB assumed)", None
    elif mode == "CMYK":
        color = "CMYK without a profile, converted plainly (sRGB assumed)"
    rgb = np.ascontiguousarray(np.asarray(img.convert("RGB")))
    if deep is not None:
        rgb = to_8bit(deep)
    return Decoded(rgb=rgb, alpha=alpha, grayscale=grayscale, source_mode=mode, frames=frames, notes=tuple(notes),
                   deep=deep, icc=icc, color=color, exif=exif)


def _decode_raw(data: bytes, max_pixels: int) -> Decoded:
    """A camera RAW or DNG: demosaiced by LibRaw with the camera's white balance, 16 bits, sRGB."""
    try:
        deep, exif = formats.decode_raw(data)
    except Exception as e:  # noqa: BLE001 - LibRaw raises its own types for files it cannot read
        raise ImageError(f"cannot decode camera RAW: {e.__class__.__name__}: {e}") from None
    h, w = deep.shape[:2]
    if w * h > max_pixels:
        raise ImageError(f"{w}x{h} = {w * h:,} pixels is above the limit of {max_pixels:,}: "
                         f"raise --max-pixels or downscale the file")
    return Decoded(rgb=to_8bit(deep), alpha=None, grayscale=False, source_mode="RAW", deep=deep, icc=None,
                   color="camera RAW rendered to sRGB (camera white balance)", exif=exif)


def to_srgb(pixels: np.ndarray, icc: bytes, grayscale: bool = False) -> np.ndarray:
    """(H, W, 3) pixels encoded in profile `icc` -> sRGB (LittleCMS, relative colorimetric). 16-bit pixels
    are converted at 8 bits (Pillow's colour management has no 16-bit RGB mode)."""
    from PIL import ImageCms

    if pixels.dtype == np.uint16:
        pixels = to_8bit(pixels)
    img = Image.fromarray(pixels[..., 0], mode="L") if grayscale else Image.fromarray(pixels, mode="RGB")
    out = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(), outputMode="RGB",
                                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)  # colours as measured
    return np.ascontiguousarray(np.asarray(out))


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The sRGB ICC profile (LittleCMS's built-in one), for outputs converted to sRGB. Its creation date and
    profile ID are zeroed (both optional in ICC), so the same output is the same bytes on every run."""
    icc = bytearray(_srgb().tobytes())
    icc[24:36] = bytes(12)   # dateTimeNumber
    icc[84:100] = bytes(16)  # profile ID (MD5 over the header): zero means "not computed"
    return bytes(icc)


def _srgb():
    """LittleCMS's built-in sRGB profile."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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


OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "webp-lossless": "WEBP", "tiff": "TIFF"}
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
        elif self.format == "tiff":
            text = "tiff deflate"
        elif self.format == "webp-lossless":
            text = "webp lossless"
        else:
            text = f"{self.format} quality={self.quality}"
        return text + (" +alpha" if alpha and OUTPUT_FORMATS[self.format] != "JPEG" else "")


def encode_image(rgb: np.ndarray, fmt: "str | Encoding" = "png", alpha: np.ndarray | None = None,
                 grayscale: bool = False, quality: int = DEFAULT_QUALITY, icc: bytes | None = None,
                 exif: bytes | None = None) -> bytes:
    """Encode (H, W, 3) uint8 or uint16 (+ alpha) to PNG/JPEG/WebP/TIFF bytes with the ICC profile and EXIF
    (TIFF-structured bytes) in the format's own containers; `fmt` is a format name or an Encoding.
    16-bit pixels stay 16-bit in PNG and TIFF; JPEG and WebP hold 8 bits (rounded)."""
    enc = fmt if isinstance(fmt, Encoding) else Encoding(fmt, quality=quality)
    deep = rgb.dtype == np.uint16
    if enc.format == "tiff":
        pixels = rgb[..., 0] if grayscale else rgb
        data = formats.tiff(pixels, icc=icc, alpha=None if grayscale else alpha)
        return formats.add_exif_exiv2(data, exif) if exif else data
    if deep and enc.format == "png":
        return formats.png16(rgb[..., 0] if grayscale else rgb, icc=icc, exif=exif, level=enc.png_level,
                             alpha=None if grayscale else alpha)
    if deep:
        rgb = to_8bit(rgb)
    img = Image.fromarray(rgb, mode="RGB")
    if grayscale:
        img = img.convert("L")
    if alpha is not None and OUTPUT_FORMATS[enc.format] != "JPEG":
        img.putalpha(Image.fromarray(alpha, mode="L"))
    extra = {}
    if icc:
        extra["icc_profile"] = icc
    if exif:
        extra["exif"] = b"Exif\x00\x00" + exif
    buf = io.BytesIO()
    img.save(buf, format=OUTPUT_FORMATS[enc.format], **enc.save_options(), **extra)
    return buf.getvalue()


def resize_alpha(alpha: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upscale an alpha channel to the output size (bicubic, clipped)."""
    return np.asarray(Image.fromarray(alpha, mode="L").resize((width, height), Image.BICUBIC))


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Shortcut: decoded RGB array of an image's bytes."""
    return decode_image(data, max_pixels=max_pixels).rgb


def to_tensor(rgb: np.ndarray) -> "torch.Tensor":
    """(H, W, 3) uint8 or uint16 -> (1, 3, H, W) float32 in [0, 1] (a copy: decoded photos may be read-only)."""
    import torch  # here, not at the top: decoding and encoding need no torch

    if rgb.dtype == np.uint16:
        return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None].div(65535)
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(255)


def to_uint16(x: "torch.Tensor") -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint16 (clamped, rounded)."""
    return x.detach().float().clamp(0, 1).mul(65535.0).round().permute(1, 2, 0).cpu().numpy().astype(np.uint16)


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
