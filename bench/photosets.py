"""Real photos in categories, built offline from photo sets installed from Debian and PyPI.

    apt-get install gcompris-qt-data mate-backgrounds palapeli-data    # the Debian photo sets
    (scikit-image and scikit-learn come with the project)

GCompris ships its activities' photos inside Qt resource bundles (`.rcc`); `read_rcc` reads that
format (header "qres", a tree of name/flags/data nodes, zlib- or zstd-compressed entries). The
categories are the photo sets' own groupings (GCompris's categorisation activity folders, its
animal/monument explorers), merged where they mean the same thing. Nothing is downloaded.
"""

from __future__ import annotations

import glob
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

RCC = "/usr/share/gcompris-qt/rcc"
MATE = "/usr/share/backgrounds/mate/nature"
PALAPELI = "/usr/share/palapeli/collection"

# photos whose GCompris folder does not say what they show, assigned by name
BIRDS = {"heron", "kingfisher", "northern_harrier", "penguin", "spoonbills", "swans", "toucan", "scarlet_macaw",
         "bird", "owl", "duck", "turkey", "chicken", "gosling"}
INSECTS = {"bee", "butterfly", "caterpillar", "beetle", "bug", "flies", "mosquito", "european-honey-bee"}
FARM = {"calf", "goat", "horse", "kitten", "cat", "cow", "dog", "pig", "sheep", "bull", "rabbit"}
WILD = {"alpaca", "camels", "camel", "chamaeleon", "chameleon", "cheetah", "flying_fox", "gibbon", "giraffe",
        "gorilla", "long_nosed_monkey", "macaque", "meerkats", "nubian_ibex", "pika", "red_panda", "rhinoceros",
        "squirrel", "bison", "crocodile", "hedgehog", "jaguar", "kangaroo", "koala", "lemur", "moose", "panda",
        "polar_bear", "bear", "fox", "wolf", "hippopotamus", "lizard", "panther-chameleon-female"}
FRUITS = {"apple", "apricot", "coconut", "kiwi", "lemon", "melon", "orange", "peach", "pear", "plum", "raspberry",
          "strawberry", "fruit", "citrus-fruits"}


def read_rcc(path: str) -> dict[str, bytes]:
    """Every file in a Qt binary resource bundle: {path inside the bundle: bytes}."""
    b = open(path, "rb").read()
    if b[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    node = 14 if version == 1 else 22

    def name(off: int) -> str:
        n = struct.unpack(">H", b[names + off:names + off + 2])[0]
        return b[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}

    def walk(i: int, prefix: str) -> None:
        p = tree + i * node
        noff, flags = struct.unpack(">IH", b[p:p + 6])
        here = name(noff) if i else ""
        if flags & 2:  # a folder
            count, first = struct.unpack(">II", b[p + 6:p + 14])
            for c in range(count):
                walk(first + c, f"{prefix}{here}/" if i else "")
            return
        off = struct.unpack(">I", b[p + 10:p + 14])[0]
        size = struct.unpack(">I", b[data + off:data + off + 4])[0]
        raw = b[data + off + 4:data + off + 4 + size]
        if flags & 1:
            raw = zlib.decompress(raw[4:])
        elif flags & 4:
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 28)
        out[prefix + here] = raw

    walk(0, "")
    return out


def _rgb(data: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"))


def _by_name(stem: str) -> str | None:
    for category, names in (("birds", BIRDS), ("insects", INSECTS), ("farm animals", FARM),
                            ("wild animals", WILD), ("fruits", FRUITS)):
        if stem in names:
            return category
    return None


def load_photosets(min_side: int = 96) -> dict[str, list[tuple[str, np.ndarray]]]:
    """{category: [(source name, RGB photo)]}, photos with both sides >= min_side, duplicates dropped."""
    if not os.path.isdir(RCC) or not os.path.isdir(MATE) or not os.path.isdir(PALAPELI):
        raise FileNotFoundError("photo sets missing: apt-get install gcompris-qt-data mate-backgrounds palapeli-data")
    found: dict[str, list[tuple[str, bytes]]] = {}

    def add(category: str | None, source: str, data: bytes) -> None:
        if category:
            found.setdefault(category, []).append((source, data))

    folders = {"tools": "tools", "renewable": "renewable energy", "fishes": "fish", "monuments": "monuments"}
    for path, data in read_rcc(f"{RCC}/categorization.rcc").items():
        folder, stem = path.split("/")[-2], os.path.splitext(path.split("/")[-1])[0]
        if path.endswith(".webp"):
            if folder == "others":
                add("renewable energy" if stem.rstrip("0123456789") in ("solar", "dam", "windmill", "geothermal")
                    else None, f"gcompris/categorization/{folder}/{stem}", data)
            else:
                add(folders.get(folder), f"gcompris/categorization/{folder}/{stem}", data)
    for path, data in read_rcc(f"{RCC}/explore_monuments.rcc").items():
        if path.endswith(".webp"):
            add("monuments", f"gcompris/explore_monuments/{path.split('/')[-2]}/{path.split('/')[-1]}", data)
    for bundle in ("explore_farm_animals", "explore_world_animals", "erase", "lang"):
        for path, data in read_rcc(f"{RCC}/{bundle}.rcc").items():
            stem = os.path.splitext(path.split("/")[-1])[0]
            if path.endswith(".webp"):
                default = {"explore_farm_animals": "farm animals", "explore_world_animals": "wild animals"}.get(bundle)
                add(_by_name(stem) or default, f"gcompris/{bundle}/{stem}", data)
    for path in sorted(glob.glob(f"{MATE}/*.jpg")):
        add("nature", f"mate-backgrounds/{os.path.basename(path)}", open(path, "rb").read())
    for path in sorted(glob.glob(f"{PALAPELI}/*.jpg")):
        stem = os.path.splitext(os.path.basename(path))[0]
        add(_by_name(stem) or {"castle-maintenon": "monuments", "cincinnati-bridge": "monuments"}.get(stem),
            f"palapeli/{stem}", open(path, "rb").read())
    from rasr import samples

    for name, category in (("chelsea", "farm animals"), ("coffee", None), ("rocket", None)):
        if category:
            add(category, f"scikit-image/{name}", _png(samples.as_rgb(samples.load_photo(name))))

    import hashlib

    seen, out = set(), {}
    for category, entries in sorted(found.items()):
        for source, data in sorted(entries):
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            rgb = _rgb(data)
            if min(rgb.shape[:2]) >= min_side:
                out.setdefault(category, []).append((source, rgb))
    return out


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
