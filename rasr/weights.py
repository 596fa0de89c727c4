"""Where weights come from: a local path, an s3:// URI, or a Hugging Face id (when a hub is reachable).

Only safe formats are read: safetensors, or torch files with `weights_only=True` (tensors and plain
containers, never arbitrary pickled objects).
"""

from __future__ import annotations

import hashlib
import os
import socket
from functools import lru_cache
from pathlib import Path

import torch

from rasr import storage


class WeightsNotFound(FileNotFoundError):
    """Raised with a message that says which weights are missing and how to provide them."""


def cache_dir() -> Path:
    """Local cache for weights copied from object storage ($RASR_CACHE, default ~/.cache/rasr)."""
    root = os.environ.get("RASR_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rasr")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    """One quick TCP check, so offline machines fail in a second instead of retrying for minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_offline_if_unreachable() -> None:
    """Set HF_HUB_OFFLINE=1 when the hub cannot be reached (else each missing file retries ~23 s)."""
    if "HF_HUB_OFFLINE" not in os.environ and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"


def looks_like_hf_id(ref: str) -> bool:
    return ("://" not in ref and not os.path.isabs(ref) and not ref.startswith(".")
            and ref.count("/") == 1 and not os.path.exists(ref))


def localize(ref: str) -> str:
    """Return a local path for a weights reference; s3:// files or folders are copied to the cache.

    A Hugging Face id is returned unchanged (the caller's from_pretrained resolves it)."""
    if ref.startswith("s3://") or (storage.is_remote(ref) and not ref.startswith("hf://")):
        fs, path = storage.filesystem(ref)
        if not fs.exists(path):
            raise WeightsNotFound(f"weights not found at {storage.redact(ref)}: check the URI and credentials")
        digest = hashlib.sha256(ref.encode()).hexdigest()[:16]
        dest = cache_dir() / "remote" / digest / os.path.basename(path.rstrip("/"))
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".partial")
            fs.get(path, str(tmp), recursive=fs.isdir(path))
            tmp.rename(dest)
        return str(dest)
    if ref.startswith("hf://"):
        return ref[len("hf://"):]
    if looks_like_hf_id(ref):
        ensure_offline_if_unreachable()
        return ref
    if not os.path.exists(ref):
        raise WeightsNotFound(f"weights not found at {ref}: give an existing file or folder, an s3:// URI or a Hugging Face id")
    return ref


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors, or from .pt/.pth/.bin with weights_only=True."""
    path = localize(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused (any error): the file holds more than tensors
        raise ValueError(
            f"{path} could not be loaded with weights_only=True ({e.__class__.__name__}): it holds "
            f"Python objects, which we never unpickle; convert it to safetensors first") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def file_digest(path: str, length: int = 16) -> str:
    """sha256 prefix of a file (or of all files of a folder, in sorted order): a weights identity."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        _hash_file(h, f)
    return h.hexdigest()[:length]


def _hash_file(h, path) -> None:
    """Feed a file's bytes into the hash `h`, a megabyte at a time."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def file_sha256s(path: str, label: str, subfolders: tuple[str, ...] | None = None) -> dict[str, str]:
    """{label/relative path: full sha256} of a weights file, or of every file of a folder (only `subfolders`
    when given): which exact files a run loaded, so two sites can tell whether they ran the same weights."""
    p = Path(path)
    if p.is_dir():
        roots = [p / s for s in subfolders] if subfolders else [p]
        files = sorted(f for r in roots if r.is_dir() for f in r.rglob("*") if f.is_file())
    else:
        files = [p] if p.is_file() else []
    out = {}
    for f in files:
        h = hashlib.sha256()
        _hash_file(h, f)
        name = f.relative_to(p).as_posix() if p.is_dir() else f.name
        out[f"{label}/{name}"] = h.hexdigest()
    return out


def tensors_digest(state: dict[str, torch.Tensor], length: int = 16) -> str:
    """sha256 prefix over names and values of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]
