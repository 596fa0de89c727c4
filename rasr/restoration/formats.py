"""Formats beyond what Pillow alone reads or writes losslessly: HEIC/HEIF (pillow-heif), camera RAW and
DNG (rawpy, LibRaw's binding), JPEG XL (pillow-jxl-plugin, when installed), 16-bit RGB PNG and TIFF in
(OpenCV) and out (OpenCV for PNG, tifffile for TIFF). AVIF is Pillow's own (Pillow >= 11.3).

A format whose codec is missing is a row with the reason and the install command, never a crash.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

RAW_EXTENSIONS = {".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw", ".3fr",
                  ".iiq", ".rwl", ".x3f"}
HEIF_EXTENSIONS = {".heic", ".heif", ".hif"}
MORE_EXTENSIONS = {".avif", ".jxl"} | HEIF_EXTENSIONS | RAW_EXTENSIONS
INSTALL = {"heif": "pip install pillow-heif", "raw": "pip install rawpy", "jxl": "pip install pillow-jxl-plugin"}
_registered: dict[str, str] = {}


def register_plugins() -> dict[str, str]:
    """Register the optional Pillow plugins once; {name: "ok" or why not}."""
    if _registered:
        return _registered
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        _registered["heif"] = "ok"
    except ImportError:
        _registered["heif"] = f"HEIC/HEIF needs pillow-heif: {INSTALL['heif']}"
    try:
        import pillow_jxl  # noqa: F401 - registers the JPEG XL plugin on import

        _registered["jxl"] = "ok"
    except ImportError:
        _registered["jxl"] = f"JPEG XL needs a Pillow plugin: {INSTALL['jxl']}"
    return _registered


def missing_codec(ext: str) -> str | None:
    """Why files with this extension cannot be decoded here (None when they can)."""
    ext = ext.lower()
    plugins = register_plugins()
    if ext in HEIF_EXTENSIONS and plugins["heif"] != "ok":
        return plugins["heif"]
    if ext == ".jxl" and plugins["jxl"] != "ok":
        return plugins["jxl"]
    if ext in RAW_EXTENSIONS:
        try:
            import rawpy  # noqa: F401
        except ImportError:
            return f"camera RAW needs rawpy: {INSTALL['raw']}"
    return None


def decode_raw(data: bytes) -> tuple[np.ndarray, bytes | None]:
    """A camera RAW/DNG -> ((H, W, 3) uint16 sRGB, demosaiced with the camera's white balance, EXIF bytes or None).

    EXIF: TIFF-based RAW files (DNG, NEF, CR2, ARW, ...) keep it in their first IFDs, which Pillow reads."""
    import rawpy

    with rawpy.imread(io.BytesIO(data)) as raw:
        rgb = raw.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=True)
    return np.ascontiguousarray(rgb), exif_via_exiv2(data)


def exif_via_exiv2(data: bytes) -> bytes | None:
    """EXIF of any file exiv2 reads (camera RAW included), as TIFF-structured bytes Pillow can write back:
    exiv2 copies the tags into a 1-pixel JPEG, whose EXIF Pillow then reads. Maker notes and the file's
    own layout tags are left out. None when there is none or exiv2 cannot read the file."""
    import pyexiv2
    from PIL import Image

    from rasr.restoration.metadata import _EXIV2

    try:
        with _EXIV2:
            src = pyexiv2.ImageData(data)
            try:
                tags = {k: v for k, v in src.read_exif().items() if k.startswith(("Exif.Image.", "Exif.Photo.", "Exif.GPSInfo."))
                        and k.split(".")[-1] not in TIFF_STRUCTURE and not k.split(".")[-1].startswith(RAW_ONLY)
                        and "MakerNote" not in k}
            finally:
                src.close()
            if not tags:
                return None
            dst = pyexiv2.ImageData(_carrier())
            try:
                dst.modify_exif(tags)
                out = dst.get_bytes()
            finally:
                dst.close()
        with Image.open(io.BytesIO(out)) as img:
            e = img.getexif()
            return e.tobytes()[6:] if len(e) else None
    except Exception:  # noqa: BLE001 - unreadable metadata costs the metadata, never the photo
        return None


def is_16bit_rgb(data: bytes) -> bool:
    """A PNG or TIFF with 16 bits per channel and colour (Pillow would read it as 8-bit RGB)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 26:
        return data[24] == 16 and data[25] in (2, 6)  # IHDR bit depth, colour type RGB / RGBA
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        try:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                return page.bitspersample == 16 and page.samplesperpixel >= 3
        except Exception:  # noqa: BLE001 - Pillow reports what is wrong with the file
            return False
    return False


def decode_16bit_rgb(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint16 RGB and an 8-bit alpha (or None) of a 16-bit PNG/TIFF, orientation not applied."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if arr is None or arr.ndim != 3:
        raise ValueError("cannot decode the 16-bit image")
    alpha = (arr[..., 3] >> 8).astype(np.uint8) if arr.shape[2] == 4 else None
    return np.ascontiguousarray(arr[..., 2::-1]), alpha


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png16(pixels: np.ndarray, icc: bytes | None = None, exif: bytes | None = None, level: int = 1,
          alpha: np.ndarray | None = None) -> bytes:
    """A 16-bit PNG of (H, W, 3) or (H, W) uint16 (+ 8-bit alpha), with iCCP and eXIf chunks."""
    import cv2

    arr = pixels[..., ::-1] if pixels.ndim == 3 else pixels  # OpenCV writes BGR
    if alpha is not None and pixels.ndim == 3:
        arr = np.dstack([arr, alpha.astype(np.uint16) * 257])
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, int(level)])
    if not ok:
        raise ValueError("OpenCV could not encode the 16-bit PNG")
    data = buf.tobytes()
    extra = b""
    if icc:
        extra += _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    end_of_ihdr = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return data[:end_of_ihdr] + extra + data[end_of_ihdr:]


def tiff(pixels: np.ndarray, icc: bytes | None = None, alpha: np.ndarray | None = None) -> bytes:
    """A deflate-compressed TIFF of (H, W, 3) or (H, W) uint8/uint16 pixels (+ alpha), ICC profile in tag 34675."""
    import tifffile

    arr = pixels
    extrasamples = None
    if alpha is not None and pixels.ndim == 3:
        a = alpha if pixels.dtype == np.uint8 else alpha.astype(np.uint16) * 257
        arr, extrasamples = np.dstack([pixels, a]), ("unassalpha",)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack", compression="zlib",
                     iccprofile=icc, extrasamples=extrasamples, metadata=None)
    return buf.getvalue()


def add_exif_exiv2(data: bytes, exif: bytes) -> bytes:
    """EXIF (TIFF-structured bytes) written into `data` by exiv2: for TIFF outputs, whose EXIF lives in
    tags of the file's own IFDs, which only a metadata library rewrites safely."""
    import pyexiv2

    from rasr.restoration.metadata import _EXIV2

    with _EXIV2:
        src, dst = pyexiv2.ImageData(_carrier(exif)), pyexiv2.ImageData(data)
        try:
            tags = {k: v for k, v in src.read_exif().items()
                    if not k.startswith("Exif.Thumbnail") and k.split(".")[-1] not in TIFF_STRUCTURE}
            dst.modify_exif(tags)
            return dst.get_bytes()
        finally:
            src.close()
            dst.close()


def _carrier(exif: bytes | None = None) -> bytes:
    """A 1-pixel JPEG (with `exif`, TIFF-structured): how EXIF crosses between Pillow's bytes and exiv2's tags."""
    from PIL import Image

    buf = io.BytesIO()
    extra = {"exif": b"Exif\x00\x00" + (exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)} if exif else {}
    Image.new("RGB", (1, 1)).save(buf, "JPEG", **extra)
    return buf.getvalue()


# DNG / camera RAW tags that describe the sensor data, meaningless for a demosaiced output
RAW_ONLY = ("DNG", "CFA", "ColorMatrix", "Calibration", "CameraCalibration", "ForwardMatrix", "AsShot", "BlackLevel",
            "WhiteLevel", "Baseline", "Opcode", "Linearization", "DefaultCrop", "ActiveArea", "AnalogBalance",
            "UniqueCameraModel", "NewSubfileType", "SubIFDs", "Profile", "CameraSerial", "RawData", "Software")

# tags that describe a TIFF file's own pixel layout: the output's, never copied from the source's EXIF
TIFF_STRUCTURE = {"ImageWidth", "ImageLength", "BitsPerSample", "Compression", "PhotometricInterpretation",
                  "StripOffsets", "SamplesPerPixel", "RowsPerStrip", "StripByteCounts", "PlanarConfiguration",
                  "TileWidth", "TileLength", "TileOffsets", "TileByteCounts", "ExtraSamples", "SampleFormat",
                  "JPEGInterchangeFormat", "JPEGInterchangeFormatLength", "ExifTag", "GPSTag", "InterColorProfile"}
