"""The paper's image-quality metrics through pyiqa 0.1.16, safe on machines with no model hub.

Per image: PSNR and SSIM on the Y channel, LPIPS and DISTS (full reference), NIQE, MUSIQ and CLIPIQA
(no reference). Per set: FID between two folders.

Protocol. OSEDiff's evaluation script, which the RASR paper reuses, builds pyiqa `psnr` and `ssim`
with `test_y_channel=True, color_space='ycbcr'` (BT.601 Y, as MATLAB's rgb2ycbcr) and pyiqa's
defaults for everything else, crop border included: 0. We keep crop_border=0 so our numbers compare
with the paper's Table 1; classic SR benchmarks (BasicSR) shave `scale` pixels per side instead, which
`crop_border=4` reproduces. Details of pyiqa that matter when comparing with other tools:
- SSIM rounds Y to integers (MATLAB's uint8 Y, range [16, 235]); PSNR does not round Y.
- SSIM: 11x11 Gaussian window, sigma 1.5, 'valid' region, no downsampling, data range 255.
- SSIM clamps the contrast-structure term at 0 (F.relu); scikit-image does not. They differ only
  where local structure is anti-correlated: blocky upscales (+2e-3), not blur, noise or JPEG (<1e-5).
- PSNR adds 1e-8 to the MSE of [0, 1] data, so identical images score PSNR_CAP = 80 dB, not inf
  (and a PSNR of 33 dB reads 1e-4 dB low).

Offline. pyiqa downloads missing weights when a metric is built, which without internet may hang.
`check(name)` looks for every file a metric needs (REQUIRED_FILES, read from pyiqa 0.1.16's sources)
before pyiqa is asked for it; a metric with missing files is "unavailable: <files and where to put
them>" and scores None. Building also blocks downloads outright, so a file this table misses fails
fast instead of hanging. pyiqa unpickles .pth files fully (weights_only=False); we first load each one
with weights_only=True and refuse files that hold more than tensors. NIQE needs no weights, only its
prior: see rasr/research/niqe_prior.py.

Speed on CPU: NIQE (~0.25 s per 512x512 photo) and SSIM are many small float64 ops; on busy cores
torch.set_num_threads(1) runs them 5-20x faster than two spinning OpenMP threads.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from rasr import weights
from rasr.research import niqe_prior
from rasr.restoration import images
from rasr.devices import pick_device
from rasr.options import STRICT, option

METRICS = ("psnr", "ssim", "lpips", "dists", "niqe", "musiq", "clipiqa")  # per image
SET_METRICS = ("fid",)
FULL_REFERENCE = ("psnr", "ssim", "lpips", "dists")
LOWER_IS_BETTER = ("lpips", "dists", "niqe", "fid")
PSNR_CAP = 10 * math.log10(1 / 1e-8)  # 80 dB: pyiqa's eps on the MSE, reached by identical images
NIQE_MIN_SIZE = 96  # NIQE works on 96x96 blocks; smaller images have none
OK = "ok"


@dataclass
class ScoreConfig:
    """What is scored: the per-image metrics and the border left out of PSNR/SSIM (`rasr metrics`; the
    evaluation's EvalConfig extends it)."""

    __pydantic_config__ = STRICT

    metrics: list[str] = option(help="Per-image metrics (FID is added per set when its weights exist).",
                                factory=lambda: list(METRICS))
    crop_border: int = option(0, "Pixels shaved per side for PSNR/SSIM.", low=0)

# pyiqa options per metric; niqe gets its prior path at build time.
_PYIQA_OPTIONS = {
    "psnr": {"test_y_channel": True, "color_space": "ycbcr"},
    "ssim": {"test_y_channel": True, "color_space": "ycbcr"},
    "lpips": {}, "dists": {}, "niqe": {}, "musiq": {}, "clipiqa": {}, "fid": {},
}

_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_TORCHVISION = "https://download.pytorch.org/models/"
_CLIP_RN50_SHA256 = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs, in one of the folders pyiqa reads (see `folder_path`)."""

    name: str
    folder: str  # "pyiqa" | "checkpoints" | "clip"
    url: str  # where pyiqa would fetch it; the user copies it from there
    sha256: str | None = None  # checked where pyiqa re-downloads on a mismatch (CLIP)


# metric -> files, from pyiqa 0.1.16: archs/lpips_arch.py, dists_arch.py (torchvision backbones via
# torchvision.models.*(weights='IMAGENET1K_V1') -> torch.hub.load_state_dict_from_url), musiq_arch.py
# ('koniq10k' as default_model_configs.py sets), clip_model.py (`_download` into get_dir()/clip, sha256
# in the URL), inception.py (FID_WEIGHTS_URL). pyiqa's own files go through
# utils/download_util.load_file_from_url into DEFAULT_CACHE_DIR.
REQUIRED_FILES: dict[str, tuple[WeightFile, ...]] = {
    "psnr": (),
    "ssim": (),
    "lpips": (WeightFile("alexnet-owt-7be5be79.pth", "checkpoints",
                         _TORCHVISION + "alexnet-owt-7be5be79.pth"),
              WeightFile("LPIPS_v0.1_alex-df73285e.pth", "pyiqa", _HF + "LPIPS_v0.1_alex-df73285e.pth")),
    "dists": (WeightFile("vgg16-397923af.pth", "checkpoints", _TORCHVISION + "vgg16-397923af.pth"),
              WeightFile("DISTS_weights-f5e65c96.pth", "pyiqa", _HF + "DISTS_weights-f5e65c96.pth")),
    "musiq": (WeightFile("musiq_koniq_ckpt-e95806b9.pth", "pyiqa", _HF + "musiq_koniq_ckpt-e95806b9.pth"),),
    "clipiqa": (WeightFile("RN50.pt", "clip", "https://openaipublic.azureedge.net/clip/models/"
                           f"{_CLIP_RN50_SHA256}/RN50.pt", sha256=_CLIP_RN50_SHA256),),
    "fid": (WeightFile("pt_inception-2015-12-05-6726825d.pth", "pyiqa",
                       _HF + "pt_inception-2015-12-05-6726825d.pth"),),
    "niqe": (),  # its prior is looked up by _niqe_prior
}
# pyiqa's own NIQE file; used when present, else our prior from basicsr's sdist.
PYIQA_NIQE_FILE = WeightFile("niqe_modelparameters.mat", "pyiqa", _HF + "niqe_modelparameters.mat")


def higher_is_better(name: str) -> bool:
    """True for PSNR, SSIM, MUSIQ, CLIPIQA; False for LPIPS, DISTS, NIQE, FID."""
    _check_name(name)
    return name not in LOWER_IS_BETTER


def folder_path(folder: str) -> str:
    """The folder pyiqa reads for "pyiqa", "checkpoints" or "clip" files, as it would resolve it now."""
    hub = torch.hub.get_dir()  # $TORCH_HOME/hub, read at each call (as torchvision and CLIP do)
    if folder == "pyiqa":
        # pyiqa fixes DEFAULT_CACHE_DIR when it is imported: follow it if it already was.
        loaded = sys.modules.get("pyiqa.utils.download_util")
        return loaded.DEFAULT_CACHE_DIR if loaded else os.path.join(hub, "pyiqa")
    return os.path.join(hub, folder)


PYIQA_MISSING = ("unavailable: pyiqa is not installed: `pip install 'rasr[eval]'` (pyiqa is licensed "
                 "PolyForm Noncommercial 1.0.0)")


def pyiqa_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("pyiqa") is not None
    except ValueError:  # sys.modules["pyiqa"] is None: imports of it are blocked
        return False


def check(name: str) -> str:
    """Return "ok" or "unavailable: <why and what to do>"; looks at files only, never downloads."""
    _check_name(name)
    if not pyiqa_installed():
        return PYIQA_MISSING
    if name == "niqe":
        return _niqe_prior()[1]
    missing = [f for f in REQUIRED_FILES[name] if not _file_ok(f)]
    return _missing_reason(missing) if missing else OK


def status(names=METRICS + SET_METRICS) -> dict[str, str]:
    """check() for several metrics at once."""
    return {n: check(n) for n in names}


def check_files(files: tuple[WeightFile, ...]) -> str:
    """check() for any set of WeightFiles (e.g. a training loss's): "ok" or "unavailable: <what to do>"."""
    missing = [f for f in files if not _file_ok(f)]
    return _missing_reason(missing) if missing else OK


def create_loss(name: str, device=None) -> torch.nn.Module:
    """pyiqa's `name` as a differentiable loss (as_loss=True), built as safely as MetricSuite builds it.

    Call it only when check(name) is "ok"; a file REQUIRED_FILES misses raises FileNotFoundError."""
    _check_name(name)
    return _create_metric(name, pick_device(device), as_loss=True)


class MetricSuite:
    """The per-image metrics, built once; `status` says which are usable and why not."""

    def __init__(self, names=METRICS, device=None, crop_border: int = 0):
        for n in names:
            if n not in METRICS:
                raise ValueError(f"unknown per-image metric {n!r}: choose from {', '.join(METRICS)}"
                                 + (" (FID is per set: use rasr.research.metrics.fid)" if n == "fid" else ""))
        self.names = tuple(names)
        self.device = pick_device(device)
        self.crop_border = int(crop_border)
        self.metrics: dict[str, torch.nn.Module] = {}
        self.status: dict[str, str] = {}
        for n in self.names:
            self.status[n] = check(n)
            if self.status[n] == OK:
                self._build(n)

    def _build(self, name: str) -> None:
        options = {}
        if name in ("psnr", "ssim"):
            options["crop_border"] = self.crop_border
        if name == "niqe":
            options["pretrained_model_path"] = _niqe_prior()[0]
        try:
            self.metrics[name] = _create_metric(name, self.device, **options)
        except Exception as e:  # noqa: BLE001 - an unusable metric is reported, never fatal
            self.status[name] = f"unavailable: pyiqa could not build {name}: {e.__class__.__name__}: {e}"

    @property
    def available(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if self.status[n] == OK)

    def score(self, pred: np.ndarray, gt: np.ndarray | None = None) -> dict[str, float | None]:
        """Scores of one uint8 RGB (H, W, 3) image; None where unavailable, and for FR metrics without gt."""
        values, reasons = self.score_with_reasons(pred, gt)
        if "niqe" in reasons and "niqe" in self.metrics:  # the evaluation scores small images with another suite
            raise ValueError(f"pred is {_size(pred)}: NIQE needs at least {NIQE_MIN_SIZE}x{NIQE_MIN_SIZE} "
                             f"pixels; leave 'niqe' out of names for smaller images")
        return values

    def score_with_reasons(self, pred: np.ndarray, gt: np.ndarray | None = None
                           ) -> tuple[dict[str, float | None], dict[str, str]]:
        """(scores, {metric: why it has no score}) of one image: a metric that cannot run on this image (too
        small for its window, say) is None with a reason a person understands; the others are still scored."""
        x = to_tensor(pred, "pred")
        y = None if gt is None else to_tensor(gt, "gt")
        if y is not None and x.shape != y.shape:
            raise ValueError(f"pred is {_size(pred)} but gt is {_size(gt)}: full-reference metrics "
                             f"need the same size; resize or crop pred to the gt size")
        out: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        side = min(x.shape[-2:])
        for n in self.names:
            metric = self.metrics.get(n)
            out[n] = None
            if metric is None or (n in FULL_REFERENCE and y is None):
                continue
            need = MIN_SIDE.get(n, 0) + (2 * self.crop_border if n in ("psnr", "ssim") else 0)
            if side < need:
                reasons[n] = (f"needs at least {need}x{need} pixels ({MIN_SIDE_WHY[n]}), the image is {_size(pred)}"
                              + (f" with a {self.crop_border}-px border left out" if n in ("psnr", "ssim")
                                 and self.crop_border else ""))
                continue
            args = (x, y) if n in FULL_REFERENCE else (x,)
            try:
                out[n] = float(metric(*(a.to(self.device) for a in args)).item())
            except Exception as e:  # noqa: BLE001 - one metric failing on one image leaves the others
                reasons[n] = f"could not score this {_size(pred)} image: {e.__class__.__name__}: {str(e)[:200]}"
        return out, reasons


# the smallest side each metric works on, and why (smaller images get a reason instead of a score)
MIN_SIDE = {"ssim": 11, "niqe": NIQE_MIN_SIZE, "lpips": 32, "dists": 32, "musiq": 32, "clipiqa": 32}
MIN_SIDE_WHY = {"ssim": "its 11x11 Gaussian window", "niqe": "its 96x96 blocks",
                "lpips": "its network's downsampling", "dists": "its network's downsampling",
                "musiq": "its patches", "clipiqa": "its network's input"}


def fid(pred_dir: str, gt_dir: str, device=None) -> float | None:
    """FID between two folders of images; None when check("fid") is not ok (its reason says why)."""
    if check("fid") != OK:
        return None
    from pyiqa.utils.img_util import scandir_images

    for label, d in (("pred_dir", pred_dir), ("gt_dir", gt_dir)):
        if not os.path.isdir(d):
            raise ValueError(f"{label} {d} is not a folder: give a folder of images")
        if len(scandir_images(d)) < 2:
            raise ValueError(f"{label} {d} holds fewer than 2 images: FID needs a set of images")
    dev = pick_device(device)
    metric = _create_metric("fid", dev)
    return float(metric(pred_dir, gt_dir, num_workers=0, verbose=False))


def to_tensor(img: np.ndarray, label: str = "image") -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (1, 3, H, W) in [0, 1], as pyiqa expects."""
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"{label} must be a uint8 (H, W, 3) RGB array, got {desc}: convert it first "
                         f"(rasr.samples.as_rgb for grayscale; for floats in [0, 1], "
                         f"np.clip(x * 255, 0, 255).round().astype(np.uint8))")
    return images.to_tensor(img)


# ---- helpers -------------------------------------------------------------------------------------

def _check_name(name: str) -> None:
    if name not in METRICS + SET_METRICS:
        raise ValueError(f"unknown metric {name!r}: choose from {', '.join(METRICS + SET_METRICS)}")


def _size(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]} (WxH)"


def _file_ok(f: WeightFile) -> bool:
    path = os.path.join(folder_path(f.folder), f.name)
    if not os.path.isfile(path):
        return False
    return f.sha256 is None or weights.file_digest(path, length=64) == f.sha256


def _missing_reason(missing: list[WeightFile]) -> str:
    parts = []
    for f in missing:
        path = os.path.join(folder_path(f.folder), f.name)
        why = "has the wrong sha256" if os.path.isfile(path) else "is missing"
        parts.append(f"{path} {why} (copy it from {f.url})")
    return "unavailable: " + "; ".join(parts) + " - folders follow $TORCH_HOME/hub"


def _niqe_prior() -> tuple[str | None, str]:
    """(path, "ok") of the packaged prior (as the .mat pyiqa reads), else of pyiqa's own NIQE file if
    someone put it in pyiqa's folder; else (None, "unavailable: <why>")."""
    try:
        return str(niqe_prior.prior_file()), OK
    except (niqe_prior.NiqePriorUnavailable, OSError) as e:
        theirs = os.path.join(folder_path("pyiqa"), PYIQA_NIQE_FILE.name)
        return (theirs, OK) if os.path.isfile(theirs) else (None, f"unavailable: NIQE prior: {e}")


def _create_metric(name: str, device: torch.device, **options) -> torch.nn.Module:
    import pyiqa

    _refuse_pickled_objects(name)
    with _no_downloads(name), contextlib.redirect_stdout(io.StringIO()):  # pyiqa prints each load
        return pyiqa.create_metric(name, device=device, **_PYIQA_OPTIONS[name], **options)


def _refuse_pickled_objects(name: str) -> None:
    # pyiqa and torchvision load these with weights_only=False; we accept tensors only.
    for f in REQUIRED_FILES[name]:
        if f.folder == "clip":  # a TorchScript archive, pinned by its sha256 above
            continue
        path = os.path.join(folder_path(f.folder), f.name)
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal means the file holds more than tensors
            raise ValueError(f"{path} does not load with weights_only=True ({e.__class__.__name__}): it "
                             f"holds Python objects, which we never unpickle; replace it with the file "
                             f"from {f.url}") from None


@contextlib.contextmanager
def _no_downloads(name: str):
    """While pyiqa builds a metric, any download attempt fails at once instead of hanging offline."""
    import pyiqa.utils.download_util as pyiqa_download

    def refuse(url, dst, *args, **kwargs):
        raise FileNotFoundError(f"{name} wanted to download {url} to {dst}: copy that file there")

    saved = torch.hub.download_url_to_file, pyiqa_download.download_url_to_file
    torch.hub.download_url_to_file = pyiqa_download.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file, pyiqa_download.download_url_to_file = saved
