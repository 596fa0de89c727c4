"""NIQE's prior (the pristine-image Gaussian model: 36 means + 36x36 covariance), obtained offline.

pyiqa fetches its NIQE parameters (`niqe_modelparameters.mat`) from the Hugging Face hub, which
these machines cannot reach. The same official parameters, estimated by the NIQE authors on their
pristine image set, ship inside the basicsr 1.4.2 source archive as
`basicsr/metrics/niqe_pris_params.npz`, and PyPI is reachable. So we download that archive with pip
(never installing basicsr), take that one file out, check its sha256, and write it as the `.mat`
that pyiqa's NIQE reads through `pretrained_model_path=` (keys `mu_prisparam`, `cov_prisparam`).
Both files are cached in `cache_dir()/niqe/`.

Prefetch from a setup script: `python -m rasr.niqe_prior` (prints the .mat path).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from rasr.weights import cache_dir

SDIST = "basicsr==1.4.2"
MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"
NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"
FETCH_COMMAND = "python -m rasr.niqe_prior"


class NiqePriorUnavailable(RuntimeError):
    """The prior could not be fetched; the message says why and what to run."""


def prior_dir() -> Path:
    return cache_dir() / "niqe"


def prior_path() -> Path:
    """Where the converted prior lives (it may not exist yet)."""
    return prior_dir() / "niqe_pris_params.mat"


def cached_prior() -> Path | None:
    """The cached .mat prior, or None when it has not been fetched; never touches the network."""
    path = prior_path()
    return path if path.is_file() else None


def fetch_niqe_prior(timeout: float = 180.0) -> Path:
    """Return the .mat prior, downloading the basicsr sdist from PyPI once if it is not cached."""
    if cached := cached_prior():
        return cached
    prior_dir().mkdir(parents=True, exist_ok=True)
    npz = prior_dir() / "niqe_pris_params.npz"
    with tempfile.TemporaryDirectory(prefix="rasr-niqe-") as tmp:
        tarball = _download_sdist(Path(tmp), timeout)
        _extract_member(tarball, npz)
    _npz_to_mat(npz, prior_path())
    return prior_path()


def _download_sdist(dest: Path, timeout: float) -> Path:
    # --no-build-isolation: pip prepares the sdist's metadata with our torch instead of fetching one.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--no-binary", ":all:", SDIST, "-d", str(dest), "--quiet", "--disable-pip-version-check",
           "--timeout", "15", "--retries", "1"]  # offline: fail in seconds, not minutes
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NiqePriorUnavailable(f"`pip download {SDIST}` took over {timeout:.0f} s: check that PyPI "
                                   f"is reachable, then run `{FETCH_COMMAND}`") from None
    tarballs = sorted(dest.glob("basicsr-*.tar.gz"))
    if run.returncode != 0 or not tarballs:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NiqePriorUnavailable(f"`pip download {SDIST}` failed ({tail[0]}): check that PyPI is "
                                   f"reachable, then run `{FETCH_COMMAND}`")
    return tarballs[0]


def _extract_member(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        try:
            data = tar.extractfile(MEMBER).read()
        except (KeyError, AttributeError):
            raise NiqePriorUnavailable(f"{tarball.name} has no {MEMBER}: the sdist layout changed") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != NPZ_SHA256:
        raise NiqePriorUnavailable(f"{MEMBER} in {tarball.name} has sha256 {digest}, expected {NPZ_SHA256}")
    tmp = dest.with_name(dest.name + ".partial")
    tmp.write_bytes(data)
    tmp.replace(dest)


def _npz_to_mat(npz: Path, mat: Path) -> None:
    import scipy.io

    with np.load(npz) as params:
        mu = params["mu_pris_param"].reshape(1, -1)  # (1, 36); pyiqa ravels it
        cov = params["cov_pris_param"]  # (36, 36)
    if mu.shape != (1, 36) or cov.shape != (36, 36):
        raise NiqePriorUnavailable(f"{npz} holds mu {mu.shape} and cov {cov.shape}, "
                                   f"expected (1, 36) and (36, 36)")
    tmp = mat.with_name(mat.stem + ".partial.mat")
    scipy.io.savemat(tmp, {"mu_prisparam": mu, "cov_prisparam": cov})
    tmp.replace(mat)


def main() -> int:
    try:
        print(fetch_niqe_prior())
    except NiqePriorUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
