"""Helpers for the reliability tests: real msgbusd processes, real files, real gRPC.

Nothing here sleeps for a fixed time: every wait polls a condition until a deadline and fails
with a description of what was still missing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc

T = TypeVar("T")

BACKENDS = ("sqlite", "duckdb")
NODE = NodeId("tenant", "default", "device")
WAIT_S = 60.0
"""How long a condition may take before a test fails (generous: the CI box is shared)."""

ALLOWED_REJECTIONS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""The only ways a daemon may refuse a request it received (issue 8)."""


def backend_unavailable(name: str) -> str | None:
    """None when the store backend loads, else why it does not."""
    for entry in entry_points(group="msgbus.stores"):
        if entry.name == name:
            try:
                entry.load()
            except Exception as error:
                return f"{name} store not importable: {error}"
            return None
    return f"{name} store not installed"


def require_backend(name: str) -> str:
    """Skip the calling test when `name` cannot be loaded; return it otherwise."""
    reason = backend_unavailable(name)
    if reason:
        pytest.skip(reason)
    return name


def wait_for(
    condition: Callable[[], T | None], what: str, timeout: float = WAIT_S, poll: float = 0.02
) -> T:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except grpc.RpcError as error:  # a daemon restarting answers UNAVAILABLE for a moment
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_error})")
        time.sleep(poll)


def to_pb(node: NodeId) -> pb.NodeId:
    """A NodeId as the wire sees it."""
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def key_of(node: pb.NodeId) -> str:
    """`tenant/bl/device` of a wire NodeId."""
    return f"{node.tenant_id}/{node.bl_name}/{node.device_id}"


def fetch_log(
    stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId = NODE
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
            limit=10_000,
            max_messages_per_response=1000,
        )
        for response in stub.Fetch(request, timeout=60):
            if response.HasField("message"):
                page.append(response.message)
            page.extend(response.messages)
        rows.extend(page)
        if len(page) < 10_000:
            return rows
        next_head = page[-1].head_id + 1


def heads(stub: rpc.MsgbusServiceStub) -> dict[tuple[str, str], int]:
    """Every log's head: (topic, origin key) -> head_id."""
    reply = stub.ListHeads(pb.ListHeadsRequest(), timeout=30)
    return {(h.topic, key_of(h.origin)): h.head_id for h in reply.heads}


def check_log_shape(rows: list[pb.MessageEnvelope], what: str) -> None:
    """Heads 1..n with no gap and no duplicate, unique ids, erased payloads on deleted rows."""
    assert [r.head_id for r in rows] == list(range(1, len(rows) + 1)), f"gap or duplicate: {what}"
    assert len({r.id for r in rows}) == len(rows), f"duplicate id in {what}"
    for r in rows:
        if r.deleted:
            assert r.payload == b"", f"deleted row keeps its payload in {what}"
            assert not r.headers, f"deleted row keeps its headers in {what}"


def status_of(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call."""
    code: grpc.StatusCode = error.code()
    return code


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (current) or VmHWM (peak) of a process, in KiB, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"{field} missing from /proc/{pid}/status"
    return int(match.group(1))


_OPENED = re.compile(r"opened the \w+ store .* in (\d+) ms")
_STARTUP = re.compile(r"startup (\d+) ms")


def last_reported_startup_ms(stderr: str) -> int:
    """The daemon's own figure for its last start: store open (with crash recovery) plus
    server start, from its "opened the ... store" and "listening" log lines."""
    opened, started = _OPENED.findall(stderr), _STARTUP.findall(stderr)
    assert opened, "the daemon did not log how long opening the store took"
    assert started, "the daemon did not log its startup time"
    return int(opened[-1]) + int(started[-1])
