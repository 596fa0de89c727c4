"""Real photos bundled with installed packages (scikit-image, scikit-learn): the sample data of the
README's first command and of the tests. Nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

# name -> (loader, category). Grayscale photos are returned as (H, W) and written as grayscale files.
_SKIMAGE = {
    "astronaut": "people", "chelsea": "animals", "coffee": "food", "rocket": "machines",
    "hubble_deep_field": "space", "immunohistochemistry": "microscopy", "retina": "microscopy",
    "camera": "people", "brick": "textures", "grass": "textures", "gravel": "textures",
    "clock": "machines", "coins": "objects", "moon": "space", "page": "documents",
    "text": "documents", "cell": "microscopy", "microaneurysms": "microscopy",
}
_SKLEARN = {"china.jpg": "places", "flower.jpg": "plants"}


def photo_names() -> list[str]:
    """Names of every bundled real photo (20)."""
    return list(_SKIMAGE) + [n.split(".")[0] for n in _SKLEARN]


def category_of(name: str) -> str:
    return _SKIMAGE.get(name) or _SKLEARN[f"{name}.jpg"]


def load_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8, (H, W, 3) for colour or (H, W) for grayscale."""
    if name in _SKIMAGE:
        import skimage.data

        img = getattr(skimage.data, name)()
    elif f"{name}.jpg" in _SKLEARN:
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        raise KeyError(f"unknown sample photo {name!r}: choose from {', '.join(photo_names())}")
    return np.ascontiguousarray(img.astype(np.uint8))


def as_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def degrade_for_query(img: np.ndarray, factor: int = 4, blur: float = 1.0) -> np.ndarray:
    """A low-quality copy: Gaussian blur then bicubic x`factor` downscale (RGB uint8)."""
    from PIL import ImageFilter

    im = Image.fromarray(as_rgb(img)).filter(ImageFilter.GaussianBlur(blur))
    w, h = im.size
    return np.asarray(im.resize((max(1, w // factor), max(1, h // factor)), Image.BICUBIC))


def write_sample(dest: str, archive_size: int = 96) -> dict[str, str]:
    """Write a sample gallery (HR photos in category folders) and an archive of small, blurred
    copies of some of them to `dest`. Returns {"gallery": path, "archive": path}."""
    gallery = os.path.join(dest, "gallery")
    archive = os.path.join(dest, "archive")
    for name in photo_names():
        img = load_photo(name)
        folder = os.path.join(gallery, category_of(name))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(img).save(os.path.join(folder, f"{name}.png"))
    for name in ("chelsea", "coffee", "astronaut", "rocket", "china", "camera"):
        lr = Image.fromarray(degrade_for_query(load_photo(name)))
        lr.thumbnail((archive_size, archive_size), Image.BICUBIC)
        folder = os.path.join(archive, category_of(name))
        os.makedirs(folder, exist_ok=True)
        lr.save(os.path.join(folder, f"{name}_lowres.jpg"), quality=85)
    return {"gallery": gallery, "archive": archive}
