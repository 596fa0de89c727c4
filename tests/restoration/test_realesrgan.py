"""Real-ESRGAN x4plus: ncnn reader, ncnn -> torch conversion checked against ncnn's own inference,
.pth/.safetensors round trips, clear errors, and the Restorer on odd sizes and tiles. CPU only, small crops."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from rasr.restoration.generators import ncnn
from rasr.restoration.generators.base import Restorer
from rasr.restoration.generators.realesrgan import RealESRGAN, packaged_param
from rasr.restoration.images import to_tensor
from rasr.weights import WeightsNotFound

PARAM = packaged_param()
BIN = PARAM[: -len(".param")] + ".bin"


@pytest.fixture(scope="module")
def model() -> RealESRGAN:
    return RealESRGAN()  # 16.7M parameters: build once


@pytest.fixture
def copied_param(tmp_path):
    """The packaged .param copied to tmp_path as x4.param, without its .bin."""
    param = tmp_path / "x4.param"
    shutil.copy(PARAM, param)
    return param


def test_reader_consumes_bin_exactly():
    m = ncnn.load(PARAM, BIN)  # raises if any byte is left over
    convs = m.of_type("Convolution")
    assert len(convs) == 6 + 15 * 23
    # per conv: 4-byte fp16 tag + fp16 weights padded to 4 bytes + fp32 bias
    expected = sum(4 + (c.params[6] * 2 + 3) // 4 * 4 + 4 * c.params[0] for c in convs)
    assert expected == os.path.getsize(BIN)
    assert m.blob_count == len({b for layer in m.layers for b in layer.outputs})
    assert convs[0].weights["weight"].shape == (64, 3, 3, 3) and convs[0].weights["weight"].dtype == np.float32
    assert convs[1].params[10] == [pytest.approx(0.2)]  # fused LeakyReLU slope, from the -23310 array key


def test_param_values():
    p = ncnn.parse_params(["0=64", "1=2.000000e+00", "-23301=2,2.000000e-01,1", "3=1.5"], "t.param:3")
    assert p == {0: 64, 1: [pytest.approx(0.2), 1], 3: 1.5}
    with pytest.raises(ValueError, match="t.param:3.*announces 3"):
        ncnn.parse_params(["-23301=3,1,2"], "t.param:3")


def test_torch_matches_ncnn_inference(model, chelsea):
    pyncnn = pytest.importorskip("ncnn")
    crop = np.ascontiguousarray(chelsea[100:148, 200:248])  # 48x48 of the cat's face
    net = pyncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute, opt.num_threads = False, 2
    opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = opt.use_bf16_storage = False
    assert net.load_param(PARAM) == 0 and net.load_model(BIN) == 0
    x = pyncnn.Mat.from_pixels(crop, pyncnn.Mat.PixelType.PIXEL_RGB, 48, 48)
    x.substract_mean_normalize([0.0, 0.0, 0.0], [1 / 255.0] * 3)  # the ncnn model takes RGB in [0, 1]
    ex = net.create_extractor()
    ex.input("data", x)
    ret, y = ex.extract("output")
    assert ret == 0
    want = np.clip(np.array(y), 0, 1)  # (3, 192, 192)
    got = model.restore(to_tensor(crop))[0].numpy()
    assert got.shape == want.shape == (3, 192, 192)
    assert np.abs(got - want).max() < 1e-2  # measured 4e-6: both compute in fp32 from the same fp16 weights


def test_pth_and_safetensors_round_trip(model, chelsea, tmp_path):
    x = to_tensor(chelsea[120:136, 220:236])
    ref = model.restore(x)
    pth = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": model.model.state_dict()}, pth)  # the official checkpoint layout
    assert torch.equal(RealESRGAN(weights=str(pth)).restore(x), ref)
    st = tmp_path / "x4plus.safetensors"
    model.export_safetensors(str(st))
    from_st = RealESRGAN(weights=str(st))
    assert torch.equal(from_st.restore(x), ref)
    assert len({model.weights_id, from_st.weights_id}) == 2


def test_remote_param_fetches_bin_beside_it(model):
    fs = fsspec.filesystem("memory")
    fs.put(PARAM, "/rasr-test/x4/m.param")
    fs.put(BIN, "/rasr-test/x4/m.bin")
    g = RealESRGAN(weights="memory://rasr-test/x4/m.param")
    assert g.weights_id == model.weights_id
    fs.rm("/rasr-test", recursive=True)


def test_param_without_bin(copied_param):
    with pytest.raises(WeightsNotFound, match=r"x4\.bin not found.*x4\.param"):
        RealESRGAN(weights=str(copied_param))


@pytest.mark.parametrize("change, message", [(-100, "truncated"), (4, "4 bytes left")], ids=["short", "long"])
def test_bin_of_wrong_length(copied_param, change, message):
    data = Path(BIN).read_bytes()
    data = data[:change] if change < 0 else data + b"\0" * change
    copied_param.with_suffix(".bin").write_bytes(data)
    with pytest.raises(ValueError, match=rf"x4\.bin.*{message}"):
        RealESRGAN(weights=str(copied_param))


@pytest.mark.parametrize("old, new, message", [
    ("Resize_1177              1 1 1878 1883 0=1", "Resize_1177              1 1 1878 1883 0=2", "Interp Resize_1177"),
    ("703_splitncnn_7 705 0=32 1=3 4=1 5=1 6=18432 9=2 -23310=1,2.000000e-01",
     "703_splitncnn_7 705 0=32 1=3 4=1 5=1 6=18432 9=2 -23310=1,1.000000e-01", r"#1 Conv_1 \(-> body.0.rdb1.conv1\)"),
], ids=["bilinear-interp", "leaky-slope-0.1"])
def test_structure_mismatch_names_file_and_layer(copied_param, old, new, message):
    text = copied_param.read_text()
    assert old in text
    copied_param.write_text(text.replace(old, new, 1))
    os.symlink(BIN, copied_param.with_suffix(".bin"))
    with pytest.raises(ValueError, match=rf"x4\.param does not match RRDBNet.*{message}"):
        RealESRGAN(weights=str(copied_param))


def test_pth_with_pickled_object_is_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"params_ema": argparse.Namespace(payload=1)}, bad)  # any non-tensor global
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only"):
        RealESRGAN(weights=str(bad))


def test_restorer_odd_size(model, chelsea):
    r = Restorer(model, tile=256)
    (hr,) = r.restore([chelsea[100:129, 200:237]])  # 37 wide, 29 high
    assert hr.shape == (29 * 4, 37 * 4, 3) and hr.dtype == np.uint8
    assert r.config()["precision"] == "fp32" and r.config()["weights_id"] == model.weights_id


def test_tiled_close_to_untiled(model, chelsea):
    crop = chelsea[90:138, 180:244]  # 48 high, 64 wide: 2 x 3 tiles of 32 with overlap 8
    (whole,) = Restorer(model, tile=0).restore([crop])
    (tiled,) = Restorer(model, tile=32, overlap=8).restore([crop])
    diff = np.abs(whole.astype(np.float32) - tiled.astype(np.float32)) / 255
    assert whole.shape == tiled.shape == (192, 256, 3)
    # measured 0.011-0.013 on three crops (untiled vs bicubic: 0.020-0.029): RRDBNet sees far, so with
    # 32-pixel tiles every output pixel lacks some of the context the untiled run has
    assert diff.mean() < 0.02
