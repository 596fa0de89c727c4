"""Decoding every kind of awkward input into RGB + alpha, or a readable error."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from rasr.restoration import images
from tests.badinputs import PIXEL_LIMIT, write_bad_inputs


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    write_bad_inputs(str(folder))
    return folder


def decode(folder, name, **kw):
    return images.decode_image((folder / name).read_bytes(), max_pixels=kw.get("max_pixels", PIXEL_LIMIT))


@pytest.mark.parametrize("name, reason", [
    ("empty.jpg", "empty file"),
    ("truncated.jpg", "truncated"),
    ("notes.jpg", "not a recognised image"),
    ("huge.png", "above the limit"),
])
def test_invalid_inputs_raise_readable_reasons(bad, name, reason):
    with pytest.raises(images.ImageError, match=reason):
        decode(bad, name)


def test_exif_orientation_is_applied(bad):
    d = decode(bad, "rotated.jpg")
    assert (d.width, d.height) == (24, 40)  # stored 40x24, orientation 6 -> portrait
    stored = np.asarray(Image.open(bad / "rotated.jpg").convert("RGB")).astype(int)
    rotated = np.rot90(stored, k=-1)        # 90 degrees clockwise
    assert np.abs(d.rgb.astype(int) - rotated).mean() < 1.0


def test_cmyk_becomes_rgb_close_to_the_original(bad):
    from tests.badinputs import crop

    d = decode(bad, "cmyk.jpg")
    assert d.source_mode == "CMYK" and d.rgb.shape == (29, 35, 3)
    assert np.abs(d.rgb.astype(int) - crop("rocket", 35, 29).astype(int)).mean() < 8


def test_16bit_is_scaled_not_clipped(bad):
    from tests.badinputs import crop

    d = decode(bad, "deep16.png")
    assert d.rgb.dtype == np.uint8
    assert np.abs(d.rgb.astype(int) - crop("astronaut", 33, 25).astype(int)).max() <= 1
    g = decode(bad, "deep16_gray.png")
    assert g.grayscale and g.rgb.max() > 100  # a clipped 16-bit image would be all 255


def test_gray_and_alpha(bad):
    g = decode(bad, "gray.png")
    assert g.grayscale and g.alpha is None and (g.rgb[..., 0] == g.rgb[..., 2]).all()
    a = decode(bad, "rgba.png")
    assert a.alpha is not None and a.alpha.shape == (22, 30) and a.alpha.min() == 0 and a.alpha.max() == 255


def test_encode_keeps_alpha_and_grayscale():
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    alpha = np.full((10, 12), 7, np.uint8)
    out = Image.open(io.BytesIO(images.encode_image(rgb, "png", alpha=alpha)))
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].max() == 7
    g = Image.open(io.BytesIO(images.encode_image(rgb, "png", grayscale=True)))
    assert g.mode == "L"
    with pytest.raises(ValueError, match="unknown output format"):
        images.encode_image(rgb, "gif")


def test_to_tensor_and_back_is_lossless_and_copies():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgb.flags.writeable = False  # decoded photos can be read-only
    x = images.to_tensor(rgb)
    assert x.shape == (1, 3, 5, 7) and x.dtype.is_floating_point and 0 <= x.min() and x.max() <= 1
    assert np.array_equal(images.to_uint8(x[0]), rgb)
    assert images.to_uint8(torch.tensor([-1.0, 0.25, 2.0]).view(3, 1, 1)).tolist() == [[[0, 64, 255]]]  # clamped, rounded


def test_decoded_cache_keeps_the_recently_used_and_bounds_the_side(tmp_path):
    paths = []
    for i, size in enumerate([(40, 20), (8, 8), (8, 8)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", size, (i * 50, 0, 0)).save(paths[-1])
    cache = images.DecodedCache(max_items=2, max_side=10)
    assert cache.get(paths[0]).shape == (5, 10, 3)  # 40x20 -> long side 10
    cache.get(paths[1])
    cache.get(paths[0])  # used again: 1 is now the least recently used
    cache.get(paths[2])
    assert list(cache._rgb) == [paths[0], paths[2]]
