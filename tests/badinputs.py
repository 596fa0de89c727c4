"""An input folder with every kind of awkward file an archive holds (built from real photos)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from rasr import samples

# name -> what the pipeline must do with it
EXPECTED = {
    "empty.jpg": "error",
    "truncated.jpg": "error",
    "notes.jpg": "error",          # a text file with an image extension
    "deep16.png": "ok",           # 16-bit RGB PNG
    "deep16_gray.png": "ok",      # 16-bit grayscale PNG
    "cmyk.jpg": "ok",
    "gray.png": "ok",
    "rgba.png": "ok",
    "rotated.jpg": "ok",          # EXIF orientation 6: stored landscape, shown portrait
    "huge.png": "error",          # above the pixel limit used by the tests
    "readme.txt": "skipped",      # not an image extension
}
PIXEL_LIMIT = 120 * 120


def crop(name: str, w: int, h: int, x: int = 100, y: int = 60) -> np.ndarray:
    img = samples.as_rgb(samples.load_photo(name))
    return np.ascontiguousarray(img[y:y + h, x:x + w])


def write_bad_inputs(folder: str) -> dict[str, str]:
    """Write the awkward files; returns name -> expected status."""
    os.makedirs(folder, exist_ok=True)
    p = lambda n: os.path.join(folder, n)
    open(p("empty.jpg"), "wb").close()
    buf = io.BytesIO()
    Image.fromarray(crop("coffee", 64, 48)).save(buf, format="JPEG", quality=90)
    open(p("truncated.jpg"), "wb").write(buf.getvalue()[: len(buf.getvalue()) // 2])
    open(p("notes.jpg"), "w").write("this is not a photo\n")
    import cv2

    deep = (crop("astronaut", 33, 25).astype(np.uint16) * 257)
    cv2.imwrite(p("deep16.png"), deep[..., ::-1])  # OpenCV writes BGR
    gray16 = (samples.load_photo("camera")[100:131, 200:223].astype(np.uint16) * 257)
    Image.fromarray(gray16).save(p("deep16_gray.png"))
    Image.fromarray(crop("rocket", 35, 29)).convert("CMYK").save(p("cmyk.jpg"), quality=95)
    Image.fromarray(samples.load_photo("camera")[50:81, 60:97]).save(p("gray.png"))
    rgba = np.dstack([crop("coffee", 30, 22), np.linspace(0, 255, 30 * 22).reshape(22, 30).astype(np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(p("rgba.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    Image.fromarray(crop("chelsea", 40, 24, x=200, y=100)).save(p("rotated.jpg"), quality=95, exif=exif)
    Image.fromarray(crop("astronaut", 130, 125, x=10, y=10)).save(p("huge.png"))
    open(p("readme.txt"), "w").write("archive notes\n")
    return dict(EXPECTED)


# ---- the fault suite's hostile archive: every kind of input, each with what must happen -------------

LONG_NAME = "e" * 246 + ".jpg"   # 250 bytes: legal, and its output name must be too


def _png_with_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims width x height (a decompression bomb's header)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def write_hostile_inputs(folder: str, outside: str) -> dict[str, tuple[str, str]]:
    """Every kind of awkward input in `folder` (symlink targets in `outside`); returns
    relpath -> (expected status, text the reason or note must contain)."""
    expected = {name: (status, "") for name, status in write_bad_inputs(folder).items()}
    expected.update({"empty.jpg": ("error", "empty file"), "truncated.jpg": ("error", "truncated"),
                     "notes.jpg": ("error", "not a recognised image"), "huge.png": ("error", "above the limit"),
                     "readme.txt": ("skipped", "not an image")})
    p = lambda n: os.path.join(folder, n)
    img = lambda name="coffee", w=40, h=24: Image.fromarray(crop(name, w, h))

    def add(name: str, status: str, text: str = "") -> str:
        expected[name] = (status, text)
        return p(name)

    img().save(add("png_named.jpg", "ok"), format="PNG")                    # wrong extension, fine content
    open(add("bomb.png", "error", "above the limit"), "wb").write(_png_with_size(60000, 60000))
    img(w=1, h=1).save(add("one.png", "ok"))
    img().convert("P").save(add("palette_alpha.png", "ok"), transparency=0)
    Image.fromarray(np.dstack([crop("camera", 30, 20)[..., 0], np.full((20, 30), 128, np.uint8)]), "LA").save(
        add("gray_alpha.png", "ok"))
    frames = [img(n, 32, 24) for n in ("coffee", "chelsea", "rocket")]
    frames[0].save(add("anim.gif", "ok", "first frame"), save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(add("anim.webp", "ok", "first frame"), save_all=True, append_images=frames[1:], duration=100,
                   lossless=True)
    for k in range(2, 9):                                                     # every EXIF orientation
        exif = Image.Exif()
        exif[0x0112] = k
        img("chelsea", 40, 24).save(add(f"exif{k}.jpg", "ok"), quality=95, exif=exif)
    good = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 3
    img().save(good, format="JPEG", quality=95, exif=exif)
    data = bytearray(good.getvalue())
    at = data.index(b"Exif\x00\x00") + 6
    data[at:at + 8] = b"XX\x00\x2a\xff\xff\xff\xff"                          # an unreadable TIFF header
    open(add("bad_exif.jpg", "ok"), "wb").write(bytes(data))
    img().save(add("scan.tif", "ok"), compression="tiff_lzw")
    open(add("photo.heic", "error", "not a recognised image format"), "wb").write(b"\x00\x00\x00\x18ftypheic")
    open(add("drawing.svg", "skipped", "not an image file extension"), "w").write("<svg xmlns='http://www.w3.org/2000/svg'/>")
    os.symlink(p("loop2"), add("loop1", "error", "symlink loop"))
    os.symlink(p("loop1"), add("loop2", "error", "symlink loop"))
    os.symlink(p("nowhere.jpg"), add("dangling.jpg", "error", "dangling symlink"))
    img().save(add("unreadable.jpg", "error", "cannot read"))             # the test denies reading it
    os.makedirs(outside, exist_ok=True)
    img().save(os.path.join(outside, "elsewhere.jpg"))
    os.symlink(os.path.join(outside, "elsewhere.jpg"), add("escape.jpg", "skipped", "--follow-symlinks"))
    for name in ("sp ace.jpg", "\u00fcn\u00ef\u00a9\u00f8d\u00e9.jpg", "new\nline.jpg", "-dash.jpg", LONG_NAME,
                 "Case.jpg", "case.jpg", "a.jpg", "a.jpg.png"):
        png = name.endswith(".png")
        img("rocket" if png else "coffee").save(add(name, "ok"), format="PNG" if png else "JPEG")
    img().save(add("..x.jpg", "skipped", "hidden"))
    img().save(add(".hidden.jpg", "skipped", "hidden"))
    os.makedirs(p(".dir"))
    img().save(os.path.join(folder, ".dir", "inside.jpg"))
    expected[".dir"] = ("skipped", "hidden folder with 1 files")
    os.makedirs(p("nested/deeper"))
    img().save(add("nested/deeper/photo.jpg", "ok"))
    return expected
