"""Health recovers by itself: a failed write transaction makes a daemon NOT_SERVING only while
its store really fails.

A quiet node gets no client write to show that its store commits again, and its peers stop
pulling from it while it says NOT_SERVING. So while the pipeline fails, the daemon's health
monitor probes it with a write that changes nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.calls import status_of
from msgbus_testkit.logs import fetch_log, publish
from reliability.test_faults import fill, tmpfs

FAILED = "storage error: the last write transaction failed"


def _status(stub: rpc.MsgbusServiceStub) -> str:
    status: str = stub.Health(pb.HealthRequest(), timeout=10).status
    return status


def _not_ready_error(stub: rpc.MsgbusServiceStub) -> str:
    """Ready's error while the daemon is not ready; "" when it is."""
    ready = stub.Ready(pb.ReadyRequest(), timeout=10)
    return "" if ready.ready else ready.error


def test_a_quiet_node_is_not_serving_while_its_store_is_locked_and_serving_after(
    tmp_path: Path,
) -> None:
    with Daemon.start(tmp_path, storage="sqlite") as daemon:
        stub = daemon.stub()
        publish(stub, "events", b"before")
        # Another writer holds the database's write lock: every write transaction fails once
        # the store's busy timeout (10 s) runs out, while reads still work.
        blocker = sqlite3.connect(daemon.data_path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(grpc.RpcError) as refused:
                publish(stub, "events", b"during")
            assert status_of(refused.value) is grpc.StatusCode.UNAVAILABLE
            assert _status(stub) == "NOT_SERVING"
            assert _not_ready_error(stub).startswith(f"{FAILED}: ")
            assert "locked" in _not_ready_error(stub)
            # The probes that follow fail too: the daemon stays NOT_SERVING, with the reason.
            wait_until(
                lambda: daemon.stderr_text().count("write transaction of 1 ops failed") >= 2,
                message="a probe to fail while the lock is held",
                timeout=60,
            )
            assert _status(stub) == "NOT_SERVING"
            assert "locked" in _not_ready_error(stub)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # No client writes: the next probe commits, and the daemon is SERVING again.
        wait_until(lambda: _status(stub) == "SERVING", message="SERVING again", timeout=30)
        assert _not_ready_error(stub) == ""
        assert [m.payload for m in fetch_log(stub, "events")] == [b"before"]
        assert "health is now SERVING" in daemon.stderr_text()
        assert "Traceback" not in daemon.stderr_text()


def test_a_quiet_node_whose_disk_filled_up_is_serving_again_without_a_write(
    tmp_path: Path, backend: str
) -> None:
    with tmpfs(tmp_path / "small", "8m") as disk:
        data = disk / f"msgbus.{backend}"
        args = ["--data", str(data)]
        with Daemon.start(tmp_path / "logs", storage=backend, extra_args=args) as daemon:
            stub = daemon.stub()
            publish(stub, "events", b"before")
            filler = fill(disk)
            acked, refused = 1, None
            # Small writes may still fit in space the store holds already; 32 KiB ones soon
            # do not.
            for _ in range(200):
                try:
                    publish(stub, "events", bytes(32 * 1024))
                except grpc.RpcError as error:
                    refused = status_of(error)
                    break
                acked += 1
            assert refused in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            # The failed transaction made it NOT_SERVING (a probe may already have cleared it:
            # a transaction that writes nothing still commits on a full disk).
            assert f"health is now NOT_SERVING (pipeline: {FAILED}: " in daemon.stderr_text()
            filler.unlink()
            # Space is free and nobody writes: the probe commits, and the daemon serves.
            wait_until(lambda: _status(stub) == "SERVING", message="SERVING again", timeout=30)
            assert _not_ready_error(stub) == ""
            assert len(fetch_log(stub, "events")) == acked
            assert "Traceback" not in daemon.stderr_text()
