"""Fault-injection points for the reliability tests (tests/test_faults.py); inert unless RASR_FAULT is set.

    RASR_FAULT="restore=3:kill-run"      the 3rd time this process reaches "restore", SIGKILL the
                                          whole run (the driver's process group, then this process;
                                          Ray workers die with their raylet)
    RASR_FAULT="marker-write=1:kill-process"  SIGKILL only this process (e.g. the driver; actors go on)
    RASR_FAULT="decode=2:exit-once"      this process exits (as a crashed worker would), once per
                                          RASR_FAULT_ONCE file: the retry that follows goes through

Points: decode, restore, image-write, temp-written (a local write's temporary file is complete but
not yet renamed), manifest-write, marker-write. Several specs may be joined with commas. Each
process counts its own hits. The check is one dictionary lookup when RASR_FAULT is unset.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

_SPEC = os.environ.get("RASR_FAULT", "")
_counts: Counter = Counter()
_lock = threading.Lock()


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        where, _, action = part.partition(":")
        name, _, n = where.partition("=")
        out[name] = (int(n or 1), action or "kill-run")
    return out


_PLAN = _parse(_SPEC)
if _PLAN:  # the first process (the driver) names the run's process group; Ray workers inherit it
    os.environ.setdefault("RASR_FAULT_PGID", str(os.getpgid(0)))


def point(name: str) -> None:
    """Mark a place where a fault may be injected."""
    if name not in _PLAN:
        return
    n, action = _PLAN[name]
    with _lock:
        _counts[name] += 1
        hit = _counts[name] == n
    if not hit:
        return
    if action == "kill-run":  # the driver's process group (driver, Ray's own processes), then this one
        os.killpg(int(os.environ["RASR_FAULT_PGID"]), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "kill-process":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit-once":
        once = os.environ.get("RASR_FAULT_ONCE")
        try:
            if once:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(70)
    else:
        raise ValueError(f"RASR_FAULT: unknown action {action!r} (kill-run, kill-process, exit-once)")
