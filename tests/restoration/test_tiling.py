"""Tiling: tiles cover every pixel, and blending identical overlaps gives back exactly what one pass gives."""

import pytest
import torch

from rasr.restoration.generators.tiling import tile_starts, tiled_apply


@pytest.mark.parametrize("length, tile, overlap", [(10, 16, 4), (16, 16, 4), (40, 16, 4), (57, 16, 3), (100, 32, 8)])
def test_tiles_cover_the_length_and_overlap_enough(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("window", ["ramp", "gaussian"])
@pytest.mark.parametrize("scale", [1, 2])
def test_a_pointwise_model_is_unchanged_by_tiling(window, scale):
    x = torch.rand(2, 3, 37, 50)

    def fn(t):  # pointwise, then nearest-neighbour upscaling: the same whatever the tiles
        return (t * 2 + 1).repeat_interleave(scale, -1).repeat_interleave(scale, -2)

    out = tiled_apply(fn, x, tile=16, overlap=4, scale=scale, window=window)
    assert out.shape == (2, 3, 37 * scale, 50 * scale)
    torch.testing.assert_close(out, fn(x), rtol=1e-6, atol=1e-6)


def test_unknown_window_is_refused():
    with pytest.raises(ValueError, match="unknown tiling window"):
        tiled_apply(lambda t: t, torch.zeros(1, 1, 4, 4), 2, 0, window="box")
