"""The sample application passes `mypy --strict` and runs against a real daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from msgbus_server.testing import Daemon

SAMPLE = Path(__file__).with_name("typing_sample.py")


def test_sample_application_passes_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[3],
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sample_application_runs(daemon: Daemon) -> None:
    result = subprocess.run(
        [sys.executable, str(SAMPLE), daemon.endpoint],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("SERVING True")
