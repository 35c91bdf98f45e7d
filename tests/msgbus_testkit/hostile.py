"""Hostile input to a real daemon: generated field values, making one call, and what a stored
copy of a pushed or pulled message must obey.

Shared by the hostile-input tests of the original RPCs (`tests/reliability/test_hostile_input.py`)
and of the contract's extensions (`test_hostile_extensions.py`). Every answer must be OK or one of
`ALLOWED_REJECTIONS`, and a refused request must change nothing (`refusal_changes_nothing`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from hypothesis import strategies as st

from msgbus_core import MsgbusError, NodeId, TombstoneRange
from msgbus_core.limits import DELETE_TOPIC, MAX_HEADER_ENTRIES, MAX_NAME_BYTES
from msgbus_core.validation import (
    validate_headers,
    validate_name,
    validate_stored_int,
    validate_topic,
)
from msgbus_proto import pb
from msgbus_server.testing import Daemon
from msgbus_testkit.calls import ALLOWED_REJECTIONS, status_of
from msgbus_testkit.nodes import LOCAL

MAX_PAYLOAD = 4096
"""The --max-payload-bytes the hostile-input daemons run with."""
SEEDED_TOPIC = "seeded"
"""A log the hostile-input daemons hold from the start."""
SUBSCRIBE_PROBE_S = 0.3
"""How long a Subscribe may stay silent before it counts as accepted (a probe, not an assert)."""

# -- strategies -----------------------------------------------------------------------------------

control = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    "\x7f\x85\u2028\u200b\ufeff"
)
plain = st.text(st.characters(codec="utf-8"), max_size=30)
nasty = st.one_of(
    plain,
    st.text(control, min_size=1, max_size=4),
    st.builds(lambda a, c, b: a + c + b, plain, control, plain),
    st.sampled_from(
        [
            "",
            " ",
            " \t\n",
            SEEDED_TOPIC,
            "$msgbus.delete",
            "$msgbus.anything",
            "a/b",
            "x" * MAX_NAME_BYTES,
            "x" * (MAX_NAME_BYTES + 1),
            "é" * 127 + "x",
            "é" * 128,
            "\x00",
            "ok\x00",
        ]
    ),
    st.integers(MAX_NAME_BYTES + 1, 100_000).map(lambda n: "y" * n),
)
parts = st.one_of(st.sampled_from(["tenant", "default", "device", "other"]), nasty)
node_ids = st.one_of(
    st.none(),
    st.just(LOCAL),
    st.builds(lambda t, b, d: pb.NodeId(tenant_id=t, bl_name=b, device_id=d), parts, parts, parts),
    # Partial NodeIds: the local one with one part blanked.
    st.sampled_from(
        [
            pb.NodeId(),
            pb.NodeId(tenant_id="tenant"),
            pb.NodeId(tenant_id="tenant", bl_name="default"),
            pb.NodeId(bl_name="default", device_id="device"),
            pb.NodeId(tenant_id="tenant", device_id="device"),
        ]
    ),
)
U64_EDGES = [
    0,
    1,
    2,
    2**31,
    2**32 - 1,
    2**53 + 1,
    2**63 - 2,
    2**63 - 1,
    2**63,
    2**64 - 2,
    2**64 - 1,
]
u64 = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(U64_EDGES))
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 10_000, 10_001, 2**32 - 1]))
small_text = st.text(st.characters(codec="utf-8"), max_size=20) | control
header_maps = st.one_of(
    st.dictionaries(small_text, small_text, max_size=5),
    st.integers(MAX_HEADER_ENTRIES - 1, 300).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    st.integers(1, 64).map(lambda n: {"big": "v" * (n * 1024)}),
    st.just({"k\x00": "v", "": "empty key", "v": "\x00"}),
)
payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * MAX_PAYLOAD, b"x" * (MAX_PAYLOAD + 1)]),
    st.integers(MAX_PAYLOAD + 1, 300_000).map(lambda n: b"z" * n),
)


def with_node(message: Any, field_name: str, node: pb.NodeId | None) -> Any:
    """`message` with its NodeId field `field_name` set to `node` (left unset for None)."""
    if node is not None:
        getattr(message, field_name).CopyFrom(node)
    return message


# -- the daemon ----------------------------------------------------------------------------------


@contextlib.contextmanager
def hostile_daemon(data_dir: Path, backend: str, *extra_args: str) -> Iterator[Daemon]:
    """A daemon with --max-payload-bytes MAX_PAYLOAD that must come through what it is sent:
    at the end it still runs and logged neither a traceback nor an internal error."""
    args = ["--max-payload-bytes", str(MAX_PAYLOAD), *extra_args]
    with Daemon.start(data_dir, storage=backend, extra_args=args) as started:
        yield started
        assert started.poll() is None, "the daemon died"
        log = started.stderr_text()
        assert "Traceback" not in log
        assert "internal error" not in log


# -- one call -------------------------------------------------------------------------------------


def try_call(call: Any) -> Any:
    """The call's answer, or its status code when it fails."""
    try:
        return call()
    except grpc.RpcError as error:
        return status_of(error)


def outcome(call: Any, *, streaming: str = "") -> grpc.StatusCode:
    """Make the call; OK or the error code. A Subscribe that stays open counts as OK."""
    try:
        if streaming == "fetch":
            list(call(timeout=30))
        elif streaming == "bidi":
            # One request, then the client half-closes; a stream still open at the probe's
            # deadline is as good as an answer (Push may wait for more).
            try:
                list(call(timeout=SUBSCRIBE_PROBE_S * 10))
            except grpc.RpcError as error:
                if status_of(error) != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
        elif streaming == "subscribe":
            stream = call(timeout=SUBSCRIBE_PROBE_S)
            try:
                next(stream)
            except StopIteration:
                pass
            except grpc.RpcError as error:
                if status_of(error) != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            finally:
                stream.cancel()
        else:
            call(timeout=30)
    except grpc.RpcError as error:
        return status_of(error)
    return grpc.StatusCode.OK


def refusal_changes_nothing(
    daemon: Daemon, call: Any, snapshot: Callable[[], Any], *, streaming: str = ""
) -> grpc.StatusCode:
    """Make one hostile call (see `outcome`): an allowed answer, the daemon alive, and when it is
    refused, `snapshot()` (what is stored, as far as the call could touch it) unchanged."""
    before = snapshot()
    code = outcome(call, streaming=streaming)
    assert daemon.poll() is None, "the daemon died"
    if code is not grpc.StatusCode.OK:
        assert code in ALLOWED_REJECTIONS, f"answered {code}"
        assert snapshot() == before, "a refused request changed the store"
    return code


# -- what a stored copy obeys ---------------------------------------------------------------------


def broken_rule(message: pb.MessageEnvelope, max_payload: int) -> str | None:
    """Which accept rule a served message breaks, or None when a daemon may store it.

    `max_payload` is the receiving daemon's --max-payload-bytes. Written out here with the
    core's field validators rather than through `msgbus_core.replication`, so that a rule
    dropped from the daemon's path still fails here.
    """
    origin = NodeId(message.origin.tenant_id, message.origin.bl_name, message.origin.device_id)
    try:
        validate_name("message.id", message.id)
        validate_topic(message.topic, "message.topic")
        origin.validate("message.origin")
        if message.head_id == 0:
            return "head_id 0"
        validate_stored_int("message.head_id", message.head_id)
        validate_stored_int("message.created_at_ms", message.created_at_ms)
        if len(message.payload) > max_payload:
            return f"a payload of {len(message.payload)} bytes, above --max-payload-bytes"
        if message.deleted and message.topic == DELETE_TOPIC:
            return "a delete marker sent deleted"
        if message.deleted:
            # Stored erased (its payload and headers are not kept), and only with a marker of
            # its origin covering it: the caller checks that against the stored log.
            return None
        validate_headers(dict(message.headers), "message.headers")
        if message.topic == DELETE_TOPIC:
            tombstone = TombstoneRange.from_marker_payload(message.payload)
            if tombstone.origin != origin:
                return f"a marker of {origin.key} deleting the log of {tombstone.origin.key}"
    except MsgbusError as error:
        return str(error)
    return None
