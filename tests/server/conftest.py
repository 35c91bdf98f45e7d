"""Fixtures for the msgbusd end-to-end tests: real daemons, real database files, real gRPC."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from msgbus_proto import rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.backends import BACKENDS, require_backend


@pytest.fixture(scope="module", params=BACKENDS)
def shared_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One daemon per backend and test module (startup is the slow part of these tests).

    Tests sharing it use unique topic and queue names (the `name` fixture). Its payload limit
    is 4096 bytes so that size checks need no large requests.
    """
    backend = require_backend(request.param)
    data_dir = tmp_path_factory.mktemp(f"msgbusd-{backend}")
    with Daemon.start(
        data_dir, storage=backend, extra_args=["--max-payload-bytes", "4096"]
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
