"""NIQE's prior (the pristine-image Gaussian model: 36 means + 36x36 covariance), shipped with rasr.

pyiqa fetches its NIQE parameters (`niqe_modelparameters.mat`) from the Hugging Face hub, which
these machines cannot reach. The same official parameters, estimated by the NIQE authors on their
pristine image set, ship inside the basicsr 1.4.2 source archive (Apache-2.0) as
`basicsr/metrics/niqe_pris_params.npz`; rasr ships that file unchanged as package data
(`rasr/data/niqe_pris_params.npz`, attribution in `rasr/data/NOTICE`). pyiqa's NIQE reads a `.mat`
through `pretrained_model_path=` (keys `mu_prisparam`, `cov_prisparam`), so the first use writes one
into `cache_dir()/niqe/`.

`python -m rasr.research.niqe_prior` writes it ahead of time (a read-only container image) and prints its path.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from rasr.weights import cache_dir

PACKAGED = Path(__file__).parents[1] / "data" / "niqe_pris_params.npz"  # rasr/data
NPZ_SHA256 = "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"


class NiqePriorUnavailable(RuntimeError):
    """The prior could not be prepared; the message says why and what to do."""


def prior_dir() -> Path:
    return cache_dir() / "niqe"


def prior_path() -> Path:
    """Where the converted prior lives (it may not exist yet)."""
    return prior_dir() / "niqe_pris_params.mat"


def cached_prior() -> Path | None:
    """The .mat prior if it was written already, else None."""
    path = prior_path()
    return path if path.is_file() else None


def prior_file() -> Path:
    """The .mat prior, written from the packaged parameters on first use (no network)."""
    if cached := cached_prior():
        return cached
    try:
        data = PACKAGED.read_bytes()
    except OSError as e:
        raise NiqePriorUnavailable(f"the packaged NIQE prior {PACKAGED} cannot be read ({e.strerror}): "
                                   f"reinstall rasr") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != NPZ_SHA256:
        raise NiqePriorUnavailable(f"{PACKAGED} has sha256 {digest}, expected {NPZ_SHA256}: reinstall rasr")
    prior_dir().mkdir(parents=True, exist_ok=True)
    _npz_to_mat(PACKAGED, prior_path())
    return prior_path()


def _npz_to_mat(npz: Path, mat: Path) -> None:
    import scipy.io

    with np.load(npz) as params:
        mu = params["mu_pris_param"].reshape(1, -1)  # (1, 36); pyiqa ravels it
        cov = params["cov_pris_param"]  # (36, 36)
    if mu.shape != (1, 36) or cov.shape != (36, 36):
        raise NiqePriorUnavailable(f"{npz} holds mu {mu.shape} and cov {cov.shape}, "
                                   f"expected (1, 36) and (36, 36)")
    tmp = mat.with_name(f"{mat.stem}.partial-{id(mat):x}.mat")
    scipy.io.savemat(tmp, {"mu_prisparam": mu, "cov_prisparam": cov})
    tmp.replace(mat)


def main() -> int:
    try:
        print(prior_file())
    except (NiqePriorUnavailable, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
