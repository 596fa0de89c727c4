"""rasr.research.metrics: PSNR/SSIM against scikit-image, NIQE with its offline prior, and metrics whose
weights are missing reported (not dropped, not downloaded) - on real photos, CPU only."""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from rasr.research import metrics, niqe_prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py

FR_PHOTOS = ("astronaut", "chelsea", "coffee", "china", "camera")  # camera is grayscale -> RGB
NIQE_PHOTOS = ("astronaut", "chelsea", "coffee")  # whole photos: small crops score higher
# What a user must provide, written out here rather than read from metrics.REQUIRED_FILES.
EXPECTED_FILES = {
    "lpips": [("checkpoints", "alexnet-owt-7be5be79.pth"), ("pyiqa", "LPIPS_v0.1_alex-df73285e.pth")],
    "dists": [("checkpoints", "vgg16-397923af.pth"), ("pyiqa", "DISTS_weights-f5e65c96.pth")],
    "musiq": [("pyiqa", "musiq_koniq_ckpt-e95806b9.pth")],
    "clipiqa": [("clip", "RN50.pt")],
    "fid": [("pyiqa", "pt_inception-2015-12-05-6726825d.pth")],
}


# ---- degradations and the independent reference --------------------------------------------------

def crop(img: np.ndarray, size: int = 256) -> np.ndarray:
    """A centre crop, to keep the file fast: pyiqa's SSIM runs in float64 (~0.2 s per 512x512 image)."""
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def blur(img: np.ndarray, radius: float = 2.0) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


def noise(img: np.ndarray, sigma: float = 10.0) -> np.ndarray:
    noisy = img + np.random.default_rng(0).normal(0, sigma, img.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def jpeg(img: np.ndarray, quality: int = 20) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def blocky(img: np.ndarray, factor: int = 8) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((w // factor, h // factor), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.NEAREST))


def sk_y(img: np.ndarray) -> np.ndarray:
    return rgb2ycbcr(img)[..., 0]  # BT.601 Y as float in [16, 235], unrounded


def sk_psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    return peak_signal_noise_ratio(sk_y(gt), sk_y(pred), data_range=255)


def sk_ssim(pred: np.ndarray, gt: np.ndarray, round_y: bool = True) -> float:
    a, b = sk_y(gt), sk_y(pred)
    if round_y:  # pyiqa's SSIM rounds Y to integers (MATLAB's uint8 Y); its PSNR does not
        a, b = a.round(), b.round()
    return structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)


# ---- fixtures ------------------------------------------------------------------------------------





@pytest.fixture(scope="module")
def fr_suite() -> metrics.MetricSuite:
    suite = metrics.MetricSuite(names=("psnr", "ssim"), device="cpu")
    assert suite.status == {"psnr": "ok", "ssim": "ok"}
    return suite


@pytest.fixture(scope="module")
def niqe_prior_path() -> str:
    """The real prior, written from the packaged parameters into the session's RASR_CACHE."""
    return str(niqe_prior.prior_file())


# ---- PSNR / SSIM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FR_PHOTOS)
def test_psnr_ssim_match_scikit_image_on_the_y_channel(fr_suite, photos, name):
    gt = crop(photos[name])
    for degrade in (blur, noise, jpeg):
        pred = degrade(gt)
        got = fr_suite.score(pred, gt)
        # PSNR reads ~1e-4 dB low: pyiqa adds 1e-8 to the MSE on [0, 1] data.
        assert got["psnr"] == pytest.approx(sk_psnr(pred, gt), abs=5e-4), degrade.__name__
        assert got["ssim"] == pytest.approx(sk_ssim(pred, gt), abs=1e-5), degrade.__name__
        # ...and rounding Y matters at this precision: unrounded SSIM is ~1e-3 away.
        assert abs(got["ssim"] - sk_ssim(pred, gt, round_y=False)) > 1e-4


def test_ssim_clamps_negative_structure_unlike_scikit_image(fr_suite, photos):
    gt = crop(photos["china"])
    pred = blocky(gt)
    got = fr_suite.score(pred, gt)["ssim"]
    assert got == pytest.approx(sk_ssim(pred, gt), abs=5e-3)
    assert got > sk_ssim(pred, gt) + 1e-4  # pyiqa's relu on the contrast-structure term


def test_crop_border_shaves_each_side(photos):
    suite = metrics.MetricSuite(names=("psnr", "ssim"), device="cpu", crop_border=4)
    gt = crop(photos["coffee"])
    pred = jpeg(gt)
    got = suite.score(pred, gt)
    inner = np.s_[4:-4, 4:-4]
    assert got["psnr"] == pytest.approx(sk_psnr(pred[inner], gt[inner]), abs=5e-4)
    assert got["ssim"] == pytest.approx(sk_ssim(pred[inner], gt[inner]), abs=1e-5)


def test_identical_images_give_the_psnr_cap_and_ssim_one(fr_suite, chelsea):
    got = fr_suite.score(chelsea, chelsea.copy())
    assert got["psnr"] == pytest.approx(metrics.PSNR_CAP) == pytest.approx(80.0)
    assert got["ssim"] == pytest.approx(1.0, abs=1e-9)


def test_size_mismatch_names_both_sizes(fr_suite, chelsea):
    with pytest.raises(ValueError, match=r"pred is 450x300 \(WxH\) but gt is 451x300 \(WxH\)"):
        fr_suite.score(chelsea[:, :450], chelsea)


def test_inputs_must_be_uint8_rgb(fr_suite, chelsea):
    with pytest.raises(ValueError, match=r"pred must be a uint8 \(H, W, 3\) RGB array, got float64"):
        fr_suite.score(chelsea / 255.0, chelsea)
    with pytest.raises(ValueError, match=r"gt must be a uint8 \(H, W, 3\) RGB array"):
        fr_suite.score(chelsea, chelsea[..., 0])


def test_full_reference_metrics_are_none_without_gt(fr_suite, chelsea):
    assert fr_suite.score(chelsea) == {"psnr": None, "ssim": None}


def test_direction_of_each_metric():
    assert [m for m in metrics.METRICS + metrics.SET_METRICS if metrics.higher_is_better(m)] == \
        ["psnr", "ssim", "musiq", "clipiqa"]
    with pytest.raises(ValueError, match="unknown metric 'psnr_y'"):
        metrics.higher_is_better("psnr_y")


# ---- NIQE ----------------------------------------------------------------------------------------

def test_without_pyiqa_every_metric_is_unavailable_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # as if the [eval] extra were not installed
    suite = metrics.MetricSuite(names=("psnr", "niqe"), device="cpu")
    assert set(suite.status.values()) == {metrics.PYIQA_MISSING}
    assert "pip install 'rasr[eval]'" in metrics.PYIQA_MISSING and "PolyForm" in metrics.PYIQA_MISSING
    assert suite.score(np.zeros((64, 64, 3), np.uint8)) == {"psnr": None, "niqe": None}


def test_niqe_prior_ships_with_rasr_and_needs_no_network(tmp_path, monkeypatch, no_network):
    import scipy.io

    monkeypatch.setenv("RASR_CACHE", str(tmp_path))  # nothing cached yet
    assert niqe_prior.cached_prior() is None
    assert metrics.check("niqe") == "ok"
    mat = scipy.io.loadmat(niqe_prior.cached_prior())
    with np.load(niqe_prior.PACKAGED) as npz:  # the same numbers as the basicsr file, in pyiqa's layout
        np.testing.assert_array_equal(mat["mu_prisparam"].ravel(), npz["mu_pris_param"].ravel())
        np.testing.assert_array_equal(mat["cov_prisparam"], npz["cov_pris_param"])
    assert hashlib.sha256(niqe_prior.PACKAGED.read_bytes()).hexdigest() == niqe_prior.NPZ_SHA256


def test_a_damaged_niqe_prior_is_unavailable_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RASR_CACHE", str(tmp_path / "cache"))
    damaged = tmp_path / "niqe_pris_params.npz"
    damaged.write_bytes(niqe_prior.PACKAGED.read_bytes()[:-10])
    monkeypatch.setattr(niqe_prior, "PACKAGED", damaged)
    suite = metrics.MetricSuite(names=("niqe",), device="cpu")
    assert suite.status["niqe"].startswith("unavailable: NIQE prior: ")
    assert "reinstall rasr" in suite.status["niqe"] and str(damaged) in suite.status["niqe"]
    assert suite.score(np.zeros((128, 128, 3), np.uint8)) == {"niqe": None}


def test_fetched_niqe_prior_is_cached_in_the_layout_pyiqa_reads(niqe_prior_path, no_network):
    import scipy.io

    assert niqe_prior.prior_file() == niqe_prior.prior_path()  # cached: no network
    params = scipy.io.loadmat(niqe_prior_path)
    assert params["mu_prisparam"].shape == (1, 36) and params["cov_prisparam"].shape == (36, 36)
    np.testing.assert_allclose(params["cov_prisparam"], params["cov_prisparam"].T)
    assert metrics.check("niqe") == "ok"


def test_niqe_prior_cli_prints_the_cached_path(niqe_prior_path):
    run = subprocess.run([sys.executable, "-m", "rasr.research.niqe_prior"], capture_output=True, text=True,
                         timeout=120, env=os.environ.copy(), check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == niqe_prior_path


def test_niqe_is_plausible_on_clean_photos_and_worse_when_degraded(niqe_prior_path, photos, no_network):
    suite = metrics.MetricSuite(names=("niqe",), device="cpu")
    assert suite.status == {"niqe": "ok"}
    for name in NIQE_PHOTOS:
        clean = suite.score(photos[name])["niqe"]
        blurred = suite.score(blur(photos[name]))["niqe"]
        blocks = suite.score(blocky(photos[name]))["niqe"]
        assert 2.0 < clean < 6.0, name  # measured 3.06, 2.57, 4.06
        assert blurred > clean + 2.0 and blocks > clean + 5.0, (name, clean, blurred, blocks)


def test_niqe_refuses_images_smaller_than_a_block(niqe_prior_path, chelsea):
    suite = metrics.MetricSuite(names=("niqe",), device="cpu")
    with pytest.raises(ValueError, match=r"pred is 64x64 \(WxH\): NIQE needs at least 96x96"):
        suite.score(np.ascontiguousarray(chelsea[:64, :64]))


def test_each_metric_that_cannot_run_says_why(niqe_prior_path, chelsea, tmp_path):
    from rasr.research import scoring

    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
        Image.fromarray(chelsea[:1, :1]).save(tmp_path / d / "dot.png")          # 1x1: only PSNR can run
        Image.fromarray(chelsea[:128, :128]).save(tmp_path / d / "crop.png")    # every metric runs
    pairs, _ = scoring.pair_by_name(str(tmp_path / "pred"), str(tmp_path / "gt"))
    df, _ = scoring.score_pairs(pairs, ["psnr", "ssim", "niqe"])
    rows = {r["image"]: r for r in df.to_dict("records")}
    dot, crop = rows["dot.png"], rows["crop.png"]
    assert dot["status"] == "ok" and dot["psnr"] == pytest.approx(metrics.PSNR_CAP)  # still scored
    assert np.isnan(dot["ssim"]) or dot["ssim"] is None
    assert "ssim: needs at least 11x11 pixels (its 11x11 Gaussian window), the image is 1x1" in dot["notes"]
    assert "niqe: needs at least 96x96 pixels" in dot["notes"] and "kernel" not in dot["notes"]
    assert not isinstance(crop["notes"], str) and crop["ssim"] == pytest.approx(1.0) and crop["niqe"] > 0


# ---- metrics with weights ------------------------------------------------------------------------

def test_missing_weights_are_reported_fast_and_offline(tmp_path, photos, no_network):
    start = time.perf_counter()
    report = metrics.status(tuple(EXPECTED_FILES))
    suite = metrics.MetricSuite(names=("lpips", "dists", "musiq", "clipiqa"), device="cpu")
    scores = suite.score(photos["chelsea"], photos["chelsea"])
    fid = metrics.fid(str(tmp_path), str(tmp_path))
    assert time.perf_counter() - start < 5.0

    for name, files in EXPECTED_FILES.items():
        assert report[name].startswith("unavailable: "), name
        for folder, file in files:
            assert os.path.join(metrics.folder_path(folder), file) + " is missing" in report[name]
    assert metrics.folder_path("checkpoints") == os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints")
    assert suite.status == {n: report[n] for n in suite.names}
    assert scores == dict.fromkeys(suite.names)
    assert fid is None


def test_required_files_match_pyiqa_and_torchvision_sources(monkeypatch):
    import torchvision.models as tvm
    from pyiqa.archs import (
        clip_model,
        dists_arch,
        inception,
        lpips_arch,
        musiq_arch,
        niqe_arch,
    )

    urls = {
        "lpips": [tvm.AlexNet_Weights.IMAGENET1K_V1.url, lpips_arch.default_model_urls["0.1_alex"]],
        "dists": [tvm.VGG16_Weights.IMAGENET1K_V1.url, dists_arch.default_model_urls["url"]],
        "musiq": [musiq_arch.default_model_urls["koniq10k"]],
        "clipiqa": [clip_model._MODELS["RN50"]],
        "fid": [inception.FID_WEIGHTS_URL],
    }
    for name, expected in urls.items():
        assert [(f.name, f.url) for f in metrics.REQUIRED_FILES[name]] == \
            [(os.path.basename(urlparse(u).path), u) for u in expected], name
    assert metrics.PYIQA_NIQE_FILE.url == niqe_arch.default_model_urls["url"]
    assert metrics.REQUIRED_FILES["clipiqa"][0].sha256 == clip_model._MODELS["RN50"].split("/")[-2]

    class Stop(Exception):
        pass

    def record(url, root):  # where pyiqa's CLIP loader looks, without letting it download
        roots.append(root)
        raise Stop

    roots = []
    monkeypatch.setattr(clip_model, "_download", record)
    with pytest.raises(Stop):
        clip_model.load("RN50", "cpu")
    assert roots == [metrics.folder_path("clip")]


def write_random_lpips(hub) -> dict[str, torch.Tensor]:
    """LPIPS files with random values under the names and keys pyiqa and torchvision expect."""
    import torchvision

    with torch.device("meta"):  # shapes only: initialising 61M values takes seconds
        shapes = {k: v.shape for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    # LPIPS uses only `features`; the classifier (57M values) is stored as one broadcast zero.
    alexnet = {k: torch.randn(shape, generator=gen) * 0.05 if k.startswith("features")
               else torch.zeros(()).expand(shape)
               for k, shape in shapes.items()}
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)  # one per AlexNet stage
           for i, c in enumerate((64, 192, 384, 256, 256))}
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "pyiqa").mkdir(parents=True)
    torch.save(alexnet, hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    torch.save(lin, hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    return lin


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    import pyiqa.utils.download_util as pyiqa_download

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # pyiqa fixed its folder when imported (from the session's TORCH_HOME): move it along.
    monkeypatch.setattr(pyiqa_download, "DEFAULT_CACHE_DIR", str(tmp_path / "hub" / "pyiqa"))
    return tmp_path / "hub"


def test_lpips_weights_once_present_are_found_and_used(empty_torch_home, photos, no_network):
    assert metrics.check("lpips").startswith("unavailable: ")
    lin = write_random_lpips(empty_torch_home)
    assert metrics.check("lpips") == "ok"

    suite = metrics.MetricSuite(names=("lpips",), device="cpu")
    assert suite.status == {"lpips": "ok"}
    loaded = suite.metrics["lpips"].net.lin0.model[1].weight.detach().cpu()
    torch.testing.assert_close(loaded, lin["lin0.model.1.weight"])  # pyiqa loaded our file
    gt = crop(photos["chelsea"])
    assert suite.score(gt, gt)["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < suite.score(blur(gt), gt)["lpips"] < float("inf")


def test_a_file_our_table_misses_fails_fast_instead_of_downloading(empty_torch_home, monkeypatch, no_network):
    write_random_lpips(empty_torch_home)
    (empty_torch_home / "checkpoints" / "alexnet-owt-7be5be79.pth").unlink()
    lpips_only = tuple(f for f in metrics.REQUIRED_FILES["lpips"] if f.folder == "pyiqa")
    monkeypatch.setitem(metrics.REQUIRED_FILES, "lpips", lpips_only)
    suite = metrics.MetricSuite(names=("lpips",), device="cpu")
    assert suite.status["lpips"].startswith("unavailable: pyiqa could not build lpips: FileNotFoundError: "
                                            "lpips wanted to download https://download.pytorch.org/models/"
                                            "alexnet-owt-7be5be79.pth")


def test_weight_files_holding_python_objects_are_refused(empty_torch_home, no_network):
    write_random_lpips(empty_torch_home)
    torch.save({"lin0.model.1.weight": torch.rand(1, 64, 1, 1), "note": argparse.Namespace()},
               empty_torch_home / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    suite = metrics.MetricSuite(names=("lpips",), device="cpu")
    assert "does not load with weights_only=True" in suite.status["lpips"]
    assert "lpips" not in suite.metrics
