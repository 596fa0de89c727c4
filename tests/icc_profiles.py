"""ICC profiles for the colour tests: the distributed ones from Debian packages (scripts/setup.sh installs
colord-data and libgs-common), and Display P3, which no Debian package ships, written here from its
published primaries (ICC v2 matrix/TRC profile, colorants adapted to D50 with Bradford)."""

from __future__ import annotations

import os
import struct

import numpy as np

FILES = {
    "adobe-rgb": "/usr/share/color/icc/colord/AdobeRGB1998.icc",
    "prophoto": "/usr/share/color/icc/colord/ProPhotoRGB.icc",
    "gray-gamma": "/usr/share/color/icc/ghostscript/sgray.icc",
    "cmyk": "/usr/share/color/icc/ghostscript/default_cmyk.icc",
}
INSTALL = "apt-get install colord-data libgs-common"


def profile(name: str) -> bytes:
    """The profile's bytes (a distributed file, or Display P3 built here)."""
    if name == "display-p3":
        return display_p3()
    path = FILES[name]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {INSTALL} (scripts/setup.sh does)")
    return open(path, "rb").read()


def _s15(v: float) -> bytes:
    return struct.pack(">i", int(round(v * 65536)))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\0"
    return (b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 8 + b"\0\0\0" + b"\0" * 67)


def _srgb_curve(n: int = 1024) -> bytes:
    x = np.linspace(0, 1, n)
    y = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    return b"curv\0\0\0\0" + struct.pack(">I", n) + np.round(y * 65535).astype(">u2").tobytes()


def _matrix(primaries, white) -> np.ndarray:
    """RGB -> XYZ (relative to `white`), adapted to D50 with the Bradford transform: columns R, G, B."""
    xyz = lambda x, y: np.array([x / y, 1.0, (1 - x - y) / y])
    p = np.stack([xyz(*c) for c in primaries], axis=1)
    w = xyz(*white)
    m = p * np.linalg.solve(p, w)
    bradford = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
    d50 = np.array([0.9642, 1.0, 0.8249])
    scale = np.diag((bradford @ d50) / (bradford @ w))
    return np.linalg.inv(bradford) @ scale @ bradford @ m


def display_p3() -> bytes:
    """Display P3 (DCI-P3 primaries, D65 white, the sRGB transfer curve) as an ICC v2 display profile."""
    m = _matrix([(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)], (0.3127, 0.3290))
    curve = _srgb_curve()
    tags = [(b"desc", _desc("Display P3 (rasr tests)")), (b"cprt", b"text\0\0\0\0No copyright, use freely\0"),
            (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(*m[:, 0])), (b"gXYZ", _xyz(*m[:, 1])),
            (b"bXYZ", _xyz(*m[:, 2])), (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        pad = (-len(data)) % 4
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + b"\0" * pad
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 4 + b"\0" * 4 + b"\0" * 8 + b"\0" * 8 + b"\0" * 4 + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
              + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body
