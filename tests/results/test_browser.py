"""The report tests' browser (tests/browser.py): where Chromium is missing they skip, naming the command
that installs it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_report_tests_skip_naming_the_install_command_where_chromium_is_missing(monkeypatch):
    from tests import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="sudo apt-get install chromium"):
        browser.chromium()
    assert "apt-get install" in (ROOT / "scripts" / "setup.sh").read_text()  # set-up installs it where it can
