"""The system's Chromium for browser tests, driven by Playwright (never a downloaded browser).

Debian's `chromium` package provides it (`.ci/run` installs it). Without it the browser tests
skip, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
"""Debian's binary first: /usr/bin/chromium is a shell wrapper around it."""


def chromium_path() -> str:
    """The Chromium executable; skips (or fails under CI=true) when there is none."""
    for candidate in (os.environ.get("MSGBUS_CHROMIUM", ""), *CANDIDATES):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    reason = "Chromium is not installed (apt-get install chromium; .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
