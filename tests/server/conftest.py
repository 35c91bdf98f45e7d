"""Fixtures for the msgbusd end-to-end tests: real daemons, real database files, real gRPC."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from msgbus_proto import rpc
from msgbus_server.testing import Daemon

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from server_helpers import BACKENDS, NODE  # noqa: E402


def _importable(name: str) -> str | None:
    """None when the store backend loads, else the reason it does not."""
    for entry in entry_points(group="msgbus.stores"):
        if entry.name == name:
            try:
                entry.load()
            except Exception as error:
                return f"{name} store not importable yet: {error}"
            return None
    return f"{name} store not installed"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each real store backend; skipped only while its package is not importable."""
    name: str = request.param
    reason = _importable(name)
    if reason:
        pytest.skip(reason)
    return name


@pytest.fixture(scope="module", params=BACKENDS)
def shared_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon per backend and test module (startup is the slow part of these tests).

    Tests sharing it use unique topic and queue names (the `name` fixture). Its payload limit
    is 4096 bytes so that size checks need no large requests.
    """
    backend: str = request.param
    reason = _importable(backend)
    if reason:
        pytest.skip(reason)
    data_dir = tmp_path_factory.mktemp(f"msgbusd-{backend}")
    with Daemon.start(
        data_dir, storage=backend, node=NODE, extra_args=["--max-payload-bytes", "4096"]
    ) as daemon:
        yield daemon
        assert "Traceback" not in daemon.stderr_text()


@pytest.fixture
def stub(shared_daemon: Daemon) -> rpc.MsgbusServiceStub:
    """A blocking stub on the module's shared daemon."""
    return shared_daemon.stub()


@pytest.fixture
def name() -> Callable[[str], str]:
    """Unique names, so tests sharing a daemon never see each other's logs."""

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
