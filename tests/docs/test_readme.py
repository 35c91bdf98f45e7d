"""The README's Python examples run as written against a real daemon.

The only change made to a snippet is the daemon's address: the suite runs many daemons at once,
each on a free port, so `127.0.0.1:50051` is replaced by the test daemon's endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_server.testing import Daemon
from msgbus_testkit.examples import python_blocks as blocks_of
from msgbus_testkit.examples import run_example

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    """Every ```python block of the README, in order."""
    return blocks_of(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(tmp_path_factory.mktemp("readme")) as running:
        yield running


def test_the_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index: int, daemon: Daemon, tmp_path: Path) -> None:
    source = python_blocks()[index].replace("127.0.0.1:50051", daemon.endpoint)
    run_example(source, tmp_path / f"readme_example_{index}.py")
