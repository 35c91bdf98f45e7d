"""Fixtures: real msgbusd processes with real SQLite files, started through the server's harness."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_server.testing import Daemon

_topics = itertools.count()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon per test module; tests keep apart by using their own topics and queues."""
    with Daemon.start(tmp_path_factory.mktemp("msgbusd")) as running:
        yield running


@pytest.fixture
def fresh_daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of the test's own, for tests that stop or restart it."""
    with Daemon.start(tmp_path / "msgbusd") as running:
        yield running


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic no other test uses."""
    return f"sdk.{request.node.name[:40]}.{next(_topics)}".replace("[", ".").replace("]", "")
