"""Durable named cursors over real gRPC against real msgbusd processes (issue 19).

CommitCursor, GetCursor, ListCursors and DeleteCursor: validation naming the field, the commit
refused above the log's head, the daemon's --max-cursors cap, paging, restarts keeping cursors,
and cursors never travelling to a peer by sync.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until

LOCAL = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="device")


def _publish(stub: rpc.MsgbusServiceStub, topic: str, count: int) -> None:
    stub.PublishBatch(
        pb.PublishBatchRequest(
            entries=[pb.PublishRequest(topic=topic, payload=b"m%d" % n) for n in range(count)]
        )
    )


def _refused(call: Callable[[Any], Any], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


def _details(error: grpc.RpcError) -> str:
    return error.details() or ""


@pytest.mark.parametrize("storage", ["sqlite", "duckdb"])
def test_commit_get_list_delete_and_restart(tmp_path: Path, storage: str) -> None:
    with Daemon.start(tmp_path, storage=storage) as daemon:
        stub = daemon.stub()
        _publish(stub, "orders", 5)
        _publish(stub, "audit", 2)
        missing = stub.GetCursor(pb.GetCursorRequest(name="billing", topic="orders"))
        assert not missing.found
        assert not missing.HasField("cursor")
        stored = stub.CommitCursor(
            pb.CommitCursorRequest(name="billing", topic="orders", head_id=3)
        ).cursor
        assert (stored.name, stored.topic, stored.head_id) == ("billing", "orders", 3)
        assert stored.origin == LOCAL
        assert stored.updated_at_ms > 0
        # An all-empty origin is the local node, like an absent one.
        got = stub.GetCursor(
            pb.GetCursorRequest(name="billing", topic="orders", origin=pb.NodeId())
        )
        assert got.found
        assert got.cursor == stored
        stub.CommitCursor(pb.CommitCursorRequest(name="billing", topic="audit", head_id=2))
        stub.CommitCursor(pb.CommitCursorRequest(name="alerts", topic="orders", head_id=5))
        daemon.restart()
        stub = daemon.stub()
        listed = stub.ListCursors(pb.ListCursorsRequest()).cursors
        assert [(c.name, c.topic, c.head_id) for c in listed] == [
            ("alerts", "orders", 5),
            ("billing", "audit", 2),
            ("billing", "orders", 3),
        ]
        assert stub.GetCursor(pb.GetCursorRequest(name="billing", topic="orders")).cursor == stored
        only = stub.ListCursors(pb.ListCursorsRequest(name="billing")).cursors
        assert [c.topic for c in only] == ["audit", "orders"]
        one = stub.DeleteCursor(pb.DeleteCursorRequest(name="billing", topic="orders"))
        assert one.deleted_count == 1
        every = stub.DeleteCursor(pb.DeleteCursorRequest(name="billing"))
        assert every.deleted_count == 1
        assert [c.name for c in stub.ListCursors(pb.ListCursorsRequest()).cursors] == ["alerts"]


def test_list_pages_with_an_opaque_token(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        _publish(stub, "orders", 1)
        names = [f"consumer-{n:03d}" for n in range(25)]
        for name in names:
            stub.CommitCursor(pb.CommitCursorRequest(name=name, topic="orders", head_id=1))
        seen: list[str] = []
        request = pb.ListCursorsRequest(page_size=10)
        pages = 0
        while True:
            response = stub.ListCursors(request)
            pages += 1
            assert len(response.cursors) <= 10
            seen.extend(c.name for c in response.cursors)
            if not response.next_page_token:
                break
            request = pb.ListCursorsRequest(page_size=10, page_token=response.next_page_token)
        assert seen == names
        assert pages == 3
        bad = _refused(stub.ListCursors, pb.ListCursorsRequest(page_token="not a token"))
        assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in _details(bad)
        # A page_size above the clamp is served (clamped to 10,000), not refused.
        assert len(stub.ListCursors(pb.ListCursorsRequest(page_size=4_000_000_000)).cursors) == 25


def test_bad_requests_are_refused_naming_the_field_and_store_nothing(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        _publish(stub, "orders", 2)
        cases = [
            (pb.CommitCursorRequest(name="", topic="orders", head_id=1), "name"),
            (pb.CommitCursorRequest(name="n" * 256, topic="orders", head_id=1), "name"),
            (pb.CommitCursorRequest(name="bad\x07name", topic="orders", head_id=1), "name"),
            (pb.CommitCursorRequest(name="billing", topic="", head_id=1), "topic"),
            (pb.CommitCursorRequest(name="billing", topic="t" * 256, head_id=1), "topic"),
            (
                pb.CommitCursorRequest(
                    name="billing", topic="orders", head_id=1, origin=pb.NodeId(tenant_id="x")
                ),
                "origin",
            ),
        ]
        for commit, field in cases:
            error = _refused(stub.CommitCursor, commit)
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, commit
            assert field in _details(error), (field, _details(error))
        reads: tuple[tuple[Callable[[Any], Any], object], ...] = (
            (stub.GetCursor, pb.GetCursorRequest(name="", topic="orders")),
            (stub.DeleteCursor, pb.DeleteCursorRequest(name="")),
            (stub.ListCursors, pb.ListCursorsRequest(name="bad\x00name")),
        )
        for call, read in reads:
            error = _refused(call, read)
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "name" in _details(error)
        # 255 bytes is the limit, not beyond it.
        stub.CommitCursor(pb.CommitCursorRequest(name="n" * 255, topic="orders", head_id=1))
        above = _refused(
            stub.CommitCursor, pb.CommitCursorRequest(name="billing", topic="orders", head_id=3)
        )
        assert above.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "head_id 3 is above the head 2" in _details(above)
        huge = _refused(
            stub.CommitCursor,
            pb.CommitCursorRequest(name="billing", topic="orders", head_id=2**64 - 1),
        )
        assert huge.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "head_id" in _details(huge)
        assert [c.name for c in stub.ListCursors(pb.ListCursorsRequest()).cursors] == ["n" * 255]
        assert stub.Health(pb.HealthRequest()).status == "SERVING"


def test_the_cursor_cap_refuses_one_more_cursor(tmp_path: Path) -> None:
    with Daemon.start(tmp_path, extra_args=["--max-cursors", "5"]) as daemon:
        stub = daemon.stub()
        _publish(stub, "orders", 3)
        for n in range(5):
            stub.CommitCursor(pb.CommitCursorRequest(name=f"c{n}", topic="orders", head_id=1))
        error = _refused(
            stub.CommitCursor, pb.CommitCursorRequest(name="c5", topic="orders", head_id=1)
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 5 cursors (--max-cursors)" in _details(error)
        # The cursors it keeps still move, and a deleted one makes room.
        moved = stub.CommitCursor(pb.CommitCursorRequest(name="c0", topic="orders", head_id=3))
        assert moved.cursor.head_id == 3
        stub.DeleteCursor(pb.DeleteCursorRequest(name="c1"))
        stub.CommitCursor(pb.CommitCursorRequest(name="c5", topic="orders", head_id=1))
        assert len(stub.ListCursors(pb.ListCursorsRequest()).cursors) == 5


def test_max_cursors_flag_is_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "msgbus_server",
            "--data",
            str(tmp_path / "x.db"),
            "--max-cursors",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--max-cursors must be between 1 and" in lines[0]


def test_cursors_are_not_replicated(tmp_path: Path) -> None:
    with (
        Daemon.start(tmp_path / "a", node="tenant/default/a") as source,
        Daemon.start(
            tmp_path / "b",
            node="tenant/default/b",
            extra_args=["--peer", source.endpoint, "--sync-interval-ms", "100"],
        ) as mirror,
    ):
        stub = source.stub()
        _publish(stub, "orders", 3)
        stub.CommitCursor(pb.CommitCursorRequest(name="billing", topic="orders", head_id=3))
        origin = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="a")
        mirror_stub = mirror.stub()
        wait_until(
            lambda: (
                mirror_stub.GetHead(pb.GetHeadRequest(topic="orders", origin=origin)).head_id == 3
            ),
            message="the mirror never synced orders",
        )
        assert list(mirror_stub.ListCursors(pb.ListCursorsRequest()).cursors) == []
        # The mirror keeps cursors of its own on the replicated log.
        mirror_stub.CommitCursor(
            pb.CommitCursorRequest(name="billing", topic="orders", origin=origin, head_id=2)
        )
        assert (
            stub.GetCursor(pb.GetCursorRequest(name="billing", topic="orders")).cursor.head_id == 3
        )


def test_a_page_of_large_cursors_stays_below_the_clients_receive_limit(tmp_path: Path) -> None:
    # 8,000 cursors of 255-byte names and topics (about 560 bytes each on the wire): 4.5 MB
    # in one page of 10,000, above gRPC's default 4 MiB receive limit; the daemon ends pages
    # at its byte budget instead.
    topic = "t" * 255
    with Daemon.start(tmp_path, extra_args=["--max-cursors", "8000"]) as daemon:
        stub = daemon.stub()
        _publish(stub, topic, 1)
        names = [f"{n:05d}".ljust(255, "n") for n in range(8_000)]
        for start in range(0, len(names), 500):
            for name in names[start : start + 500]:
                stub.CommitCursor(pb.CommitCursorRequest(name=name, topic=topic, head_id=1))
        # The client keeps gRPC's default receive limit (4 MiB).
        with grpc.insecure_channel(daemon.endpoint) as channel:
            client = rpc.MsgbusServiceStub(channel)
            seen: list[str] = []
            request = pb.ListCursorsRequest(page_size=10_000)
            pages = 0
            while True:
                response = client.ListCursors(request)
                pages += 1
                assert response.ByteSize() < 4 * 1024 * 1024
                seen.extend(c.name for c in response.cursors)
                if not response.next_page_token:
                    break
                request = pb.ListCursorsRequest(
                    page_size=10_000, page_token=response.next_page_token
                )
        assert seen == names
        assert pages >= 2
