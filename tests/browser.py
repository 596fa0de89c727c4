"""Headless Chromium for the tests that render HTML reports (tests/research/test_evaluate.py,
tests/results/test_run_report.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

INSTALL = "sudo apt-get install chromium"  # scripts/setup.sh runs it when it can


def chromium() -> str:
    """The browser's path; skips the test, naming the install command, where there is none."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip(f"headless Chromium is needed for this check: {INSTALL}")
    return exe


def browse(url: str, tmp_path, *extra: str, height: int = 2400) -> subprocess.CompletedProcess:
    """Open `url` in headless Chromium; timers and script loads run (virtual time) before it dumps or shoots."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'u'}",
            f"--window-size=1400,{height}", "--virtual-time-budget=20000", "--enable-logging=stderr", "--v=0",
            *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)
