"""Durable cursors under a policy, on a real daemon: a cursor needs `read` on its log, deleting
every cursor of a name needs `admin`, and ListCursors shows only cursors of readable logs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon
from msgbus_server.tokens import add_token

POLICY = """
[policy]
token-file = "tokens"

[[policy.rule]]
name = "operator"
callers = ["token:operator"]
allow = ["publish", "read", "admin"]

[[policy.rule]]
name = "billing reads orders"
callers = ["token:billing"]
allow = ["read"]
topics = ["orders"]
"""


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _denied(call: Callable[..., Any], request: object, meta: object) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, metadata=meta)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    return raised.value.details() or ""


def test_cursor_rpcs_follow_read_and_admin(tmp_path: Path) -> None:
    tokens = {name: add_token(str(tmp_path / "tokens"), name) for name in ("operator", "billing")}
    config = tmp_path / "msgbusd.toml"
    config.write_text(POLICY)
    with Daemon.start(tmp_path, extra_args=["--config", str(config)]) as daemon:
        stub = rpc.MsgbusServiceStub(daemon.channel())
        operator, billing = _as(tokens["operator"]), _as(tokens["billing"])
        for topic in ("orders", "payroll"):
            stub.Publish(pb.PublishRequest(topic=topic, payload=b"x"), metadata=operator)
            stub.CommitCursor(
                pb.CommitCursorRequest(name="ops", topic=topic, head_id=1), metadata=operator
            )
        # billing may read orders, so it may keep a cursor there ...
        stub.CommitCursor(
            pb.CommitCursorRequest(name="billing", topic="orders", head_id=1), metadata=billing
        )
        got = stub.GetCursor(pb.GetCursorRequest(name="ops", topic="orders"), metadata=billing)
        assert got.found
        # ... but not on payroll, which it may not read.
        for call, request in (
            (stub.CommitCursor, pb.CommitCursorRequest(name="billing", topic="payroll", head_id=1)),
            (stub.GetCursor, pb.GetCursorRequest(name="ops", topic="payroll")),
            (stub.DeleteCursor, pb.DeleteCursorRequest(name="ops", topic="payroll")),
        ):
            detail = _denied(call, request, billing)
            assert "keep a cursor on topic 'payroll'" in detail
        # Every cursor of a name spans logs: admin.
        detail = _denied(stub.DeleteCursor, pb.DeleteCursorRequest(name="ops"), billing)
        assert "delete every cursor of the name 'ops'" in detail
        shown = stub.ListCursors(pb.ListCursorsRequest(), metadata=billing).cursors
        assert sorted((c.name, c.topic) for c in shown) == [
            ("billing", "orders"),
            ("ops", "orders"),
        ]
        everything = stub.ListCursors(pb.ListCursorsRequest(), metadata=operator).cursors
        assert len(everything) == 3
        # Nothing the refusals touched changed.
        kept = stub.GetCursor(pb.GetCursorRequest(name="ops", topic="payroll"), metadata=operator)
        assert kept.found
        assert kept.cursor.head_id == 1
        deleted = stub.DeleteCursor(pb.DeleteCursorRequest(name="ops"), metadata=operator)
        assert deleted.deleted_count == 2
