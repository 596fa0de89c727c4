"""Progress bars for long CLI work, shared by the shard tasks of one flow run (same process)."""

from __future__ import annotations

import contextlib
import sys
import threading

from tqdm import tqdm

_BARS: dict[str, tqdm] = {}
_LOCK = threading.Lock()


def start(key: str, total: int, desc: str, enabled: bool) -> None:
    """Open a bar under `key` (no-op when disabled, e.g. under Prefect deployments)."""
    if not enabled:
        return
    with _LOCK:
        _BARS[key] = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=True)


def advance(key: str, n: int = 1, **postfix) -> None:
    with _LOCK:
        bar = _BARS.get(key)
        if bar is not None:
            bar.update(n)
            if postfix:
                bar.set_postfix(**postfix, refresh=False)


def close(key: str) -> None:
    with _LOCK:
        bar = _BARS.pop(key, None)
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def bar(key: str, total: int, desc: str, enabled: bool):
    """A bar under `key` for the duration of the block (closed however the block ends)."""
    start(key, total, desc, enabled)
    try:
        yield key
    finally:
        close(key)
