"""Reading whole logs of a running daemon over gRPC, and checking the shape every log must keep."""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Protocol

from msgbus_core import NodeId
from msgbus_proto import pb, rpc

DEFAULT_NODE = NodeId("tenant", "default", "device")
"""The node id `msgbus_server.testing.Daemon.start` gives a daemon unless told otherwise."""

PAGE = 10_000
"""Fetch's largest page."""


def to_pb(node: NodeId) -> pb.NodeId:
    """A NodeId as the wire sees it."""
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def key_of(node: pb.NodeId) -> str:
    """`tenant/bl/device` of a wire NodeId."""
    return f"{node.tenant_id}/{node.bl_name}/{node.device_id}"


def fetch_log(
    stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId = DEFAULT_NODE
) -> list[pb.MessageEnvelope]:
    """Every message of one log, page by page (packed responses, so it is quick)."""
    rows: list[pb.MessageEnvelope] = []
    next_head = 1
    while True:
        page: list[pb.MessageEnvelope] = []
        request = pb.FetchRequest(
            topic=topic,
            origin=to_pb(origin),
            from_head_id=next_head,
            limit=PAGE,
            max_messages_per_response=1000,
        )
        for response in stub.Fetch(request, timeout=60):
            if response.HasField("message"):
                page.append(response.message)
            page.extend(response.messages)
        rows.extend(page)
        if len(page) < PAGE:
            return rows
        next_head = page[-1].head_id + 1


def heads(stub: rpc.MsgbusServiceStub) -> dict[tuple[str, str], int]:
    """Every log's head: (topic, origin key) -> head_id."""
    reply = stub.ListHeads(pb.ListHeadsRequest(), timeout=30)
    return {(h.topic, key_of(h.origin)): h.head_id for h in reply.heads}


class LogEntry(Protocol):
    """What `check_log_shape` reads of a message: a wire envelope or a test's own row."""

    @property
    def id(self) -> str: ...
    @property
    def head_id(self) -> int: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def headers(self) -> Sized: ...
    @property
    def deleted(self) -> bool: ...


def check_log_shape(rows: Sequence[LogEntry], what: str) -> None:
    """Heads 1..n with no gap and no duplicate, unique ids, erased payloads on deleted rows."""
    assert [r.head_id for r in rows] == list(range(1, len(rows) + 1)), f"gap or duplicate: {what}"
    assert len({r.id for r in rows}) == len(rows), f"duplicate id in {what}"
    for r in rows:
        if r.deleted:
            assert r.payload == b"", f"deleted row keeps its payload in {what}"
            assert not r.headers, f"deleted row keeps its headers in {what}"
