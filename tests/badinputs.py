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
    p = lambda n: os.path.join(folder, n)  # noqa: E731
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
