"""Publishing to and reading logs of a running daemon over blocking gRPC stubs.

Whole-log reads and the log-shape check are the ones the soak workloads use
(`scripts/workloads/logs.py`), re-exported here so that tests import them from one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from workloads.logs import check_log_shape, fetch_log, heads, key_of, to_pb

from msgbus_core import NodeId
from msgbus_proto import pb, rpc


def publish(
    stub: rpc.MsgbusServiceStub, topic: str, payload: bytes = b"x", **fields: Any
) -> pb.MessageEnvelope:
    """Publish one message and return its envelope."""
    request = pb.PublishRequest(topic=topic, payload=payload, **fields)
    envelope: pb.MessageEnvelope = stub.Publish(request, timeout=30).message
    return envelope


def publish_many(stub: rpc.MsgbusServiceStub, topic: str, count: int, prefix: str = "m") -> None:
    """Publish `count` messages `<prefix>-<i>` with header `n=<i>`, up to 64 in flight
    (concurrent publishes share a commit)."""
    pending: list[grpc.Future] = []  # type: ignore[type-arg]
    for i in range(count):
        request = pb.PublishRequest(
            topic=topic, payload=f"{prefix}-{i}".encode(), headers={"n": str(i)}
        )
        pending.append(stub.Publish.future(request, timeout=30))
        if len(pending) >= 64:
            for future in pending:
                future.result()
            pending.clear()
    for future in pending:
        future.result()


def fetch_page(stub: rpc.MsgbusServiceStub, topic: str, **fields: Any) -> list[pb.MessageEnvelope]:
    """The messages of one Fetch call (one page, one message per response)."""
    request = pb.FetchRequest(topic=topic, **fields)
    return [response.message for response in stub.Fetch(request, timeout=30)]


def topics_in_store(stub: rpc.MsgbusServiceStub) -> set[str]:
    """Topics that have at least one stored message."""
    return {head.topic for head in stub.ListHeads(pb.ListHeadsRequest(), timeout=30).heads}


@dataclass(frozen=True)
class Row:
    """What converged logs must agree on, message by message (comparable, hashable)."""

    id: str
    head_id: int
    payload: bytes
    headers: tuple[tuple[str, str], ...]
    created_at_ms: int
    deleted: bool

    @classmethod
    def of(cls, message: pb.MessageEnvelope) -> Row:
        """The row of a stored message."""
        return cls(
            message.id,
            message.head_id,
            message.payload,
            tuple(sorted(message.headers.items())),
            message.created_at_ms,
            message.deleted,
        )


LogDump = dict[tuple[str, str], list[Row]]
"""Every log of a daemon: (topic, origin key) -> its rows."""


def fetch_rows(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId) -> list[Row]:
    """Every message of one log, as rows."""
    return [Row.of(message) for message in fetch_log(stub, topic, origin)]


def dump(stub: rpc.MsgbusServiceStub) -> LogDump:
    """Every log of a daemon, in full."""
    return {
        (topic, key): fetch_rows(stub, topic, NodeId.from_key(key))
        for (topic, key) in sorted(heads(stub))
    }


def converged(stubs: Sequence[rpc.MsgbusServiceStub], expect_logs: int) -> LogDump | None:
    """The common dump when every daemon holds identical logs (and at least `expect_logs`)."""
    dumps = [dump(s) for s in stubs]
    first = dumps[0]
    if len(first) < expect_logs:
        return None
    if all(d == first for d in dumps[1:]):
        return first
    return None


__all__ = [
    "LogDump",
    "Row",
    "check_log_shape",
    "converged",
    "dump",
    "fetch_log",
    "fetch_page",
    "fetch_rows",
    "heads",
    "key_of",
    "publish",
    "publish_many",
    "to_pb",
    "topics_in_store",
]
