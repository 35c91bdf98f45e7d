"""Fixtures for the packaging tests: one `uv build --all-packages` per test run, and venvs.

The build is shared by all pytest-xdist workers of a run (a file lock serialises it), because it
is the slowest step and the machine is small.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from msgbus_testkit.distributions import PACKAGES, ROOT, Dist, Venv, make_venv, uv

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Building and installing packages takes longer than the default per-test timeout."""
    for item in items:
        if Path(str(item.fspath)).parent == _HERE:
            item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def uv_available() -> None:
    if shutil.which("uv") is None:
        pytest.fail("uv is not on PATH: the packaging tests build and install with uv")


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory, uv_available: None) -> Dist:
    """Wheels and sdists of all six packages, from `uv build --all-packages`.

    uv builds each sdist first and then the wheel FROM that sdist, so a successful build is also
    proof that every sdist builds a wheel on its own.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent / f"msgbus-dist-{run}" if run else base / "msgbus-dist"
    shared.mkdir(parents=True, exist_ok=True)
    out = shared / "dist"
    done = shared / "done"
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            uv("build", "--all-packages", "--out-dir", str(out), cwd=ROOT)
            done.touch()
    built = sorted(p.name for p in out.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    assert len(built) == 2 * len(PACKAGES), built
    return Dist(out)


@pytest.fixture(scope="session")
def server_venv(tmp_path_factory: pytest.TempPathFactory, dist: Dist) -> Venv:
    """`pip install msgbus-server` and nothing else (the SQLite store comes with it)."""
    return make_venv(tmp_path_factory.mktemp("server") / "venv", ["msgbus-server"], dist)


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory, dist: Dist) -> Venv:
    """What the Docker image installs: the server (with SQLite) and the SDK for HEALTHCHECK."""
    return make_venv(
        tmp_path_factory.mktemp("image") / "venv", ["msgbus-server", "msgbus-sdk"], dist
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory outside the repository (so nothing imports from it)."""
    path = tmp_path / "work"
    path.mkdir()
    return path
