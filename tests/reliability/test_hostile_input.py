"""Hostile input: Hypothesis-generated requests to every RPC, raw bytes as request bodies, and a
fake peer that serves generated ListHeads/Fetch answers to a real daemon.

Every answer must be OK or one of INVALID_ARGUMENT, PERMISSION_DENIED, FAILED_PRECONDITION,
NOT_FOUND, RESOURCE_EXHAUSTED: never INTERNAL or UNKNOWN, never a crash. A rejected request must
not change what is stored: ListHeads, the seeded and the targeted logs, the seeded and the targeted
FIFO fronts and the sync states are compared before and after each one. One daemon per backend
for the whole module; example counts are bounded so the module stays quick.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgbus_core import NodeId, TombstoneRange
from msgbus_core.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DELETE_TOPIC,
    MAX_HEADER_BYTES,
    MAX_HEADER_ENTRIES,
)
from msgbus_core.validation import (
    validate_headers,
    validate_topic,
)
from msgbus_proto import SERVICE_NAME, pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.backends import BACKENDS, require_backend
from msgbus_testkit.calls import status_of
from msgbus_testkit.hostile import (
    SEEDED_TOPIC,
    broken_rule,
    header_maps,
    hostile_daemon,
    nasty,
    node_ids,
    payloads,
    refusal_changes_nothing,
    try_call,
    u32,
    u64,
    with_node,
)
from msgbus_testkit.logs import check_log_shape, fetch_log, heads, key_of, to_pb
from msgbus_testkit.peers import FakePeer

SEEDED_QUEUE = "seeded-q"

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
inputs_tried = 0
peer_messages_checked = 0


# -- strategies -----------------------------------------------------------------------------------

names = st.one_of(st.just(SEEDED_TOPIC), st.just(SEEDED_QUEUE), nasty)
# -- the daemon and what is stored ---------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    backend = require_backend(request.param)
    data_dir = tmp_path_factory.mktemp(f"hostile-{backend}")
    with hostile_daemon(data_dir, backend) as started:
        stub = started.stub()
        for i in range(5):
            stub.Publish(
                pb.PublishRequest(topic=SEEDED_TOPIC, payload=b"%d" % i, headers={"i": str(i)})
            )
        stub.DeleteRange(pb.DeleteRangeRequest(topic=SEEDED_TOPIC, from_head_id=2, to_head_id=2))
        target = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
        for i in range(3):
            stub.EnqueueFifo(
                pb.EnqueueFifoRequest(
                    queue=SEEDED_QUEUE, topic="jobs", target=target, payload=b"%d" % i
                )
            )
        yield started


@pytest.fixture(scope="module")
def stub(daemon: Daemon) -> rpc.MsgbusServiceStub:
    return daemon.stub()


def snapshot(
    stub: rpc.MsgbusServiceStub, topic: str = "", origin: pb.NodeId | None = None, queue: str = ""
) -> tuple[Any, ...]:
    """What is stored, as far as a request could have touched it."""

    def log(t: str, o: pb.NodeId | None) -> Any:
        request = pb.FetchRequest(topic=t, limit=10_000, max_messages_per_response=1000)
        with_node(request, "origin", o)
        return [r.SerializeToString(deterministic=True) for r in stub.Fetch(request, timeout=30)]

    def front(q: str) -> Any:
        return stub.PeekFifo(pb.PeekFifoRequest(queue=q), timeout=30).SerializeToString()

    states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=30)
    return (
        sorted(heads(stub).items()),
        try_call(lambda: log(SEEDED_TOPIC, None)),
        try_call(lambda: log(topic, origin)),
        try_call(lambda: front(SEEDED_QUEUE)),
        try_call(lambda: front(queue)),
        states.SerializeToString(deterministic=True),
    )


def check_request(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    call: Any,
    *,
    streaming: str = "",
    topic: str = "",
    origin: pb.NodeId | None = None,
    queue: str = "",
) -> grpc.StatusCode:
    """One hostile request: an allowed answer, and nothing stored when it is refused."""
    global inputs_tried
    inputs_tried += 1
    return refusal_changes_nothing(
        daemon, call, lambda: snapshot(stub, topic, origin, queue), streaming=streaming
    )


# -- every RPC -----------------------------------------------------------------------------------


@FUZZ
@given(topic=names, origin=node_ids, payload=payloads, headers=header_maps)
def test_publish(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic: str,
    origin: pb.NodeId | None,
    payload: bytes,
    headers: dict[str, str],
) -> None:
    request = with_node(
        pb.PublishRequest(topic=topic, payload=payload, headers=headers), "origin", origin
    )
    check_request(
        daemon, stub, lambda **kw: stub.Publish(request, **kw), topic=topic, origin=origin
    )


@FUZZ
@given(
    entries=st.lists(
        st.builds(
            lambda t, o, p, h: with_node(
                pb.PublishRequest(topic=t, payload=p, headers=h), "origin", o
            ),
            names,
            node_ids,
            payloads,
            header_maps,
        ),
        max_size=4,
    )
)
def test_publish_batch(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, entries: list[pb.PublishRequest]
) -> None:
    request = pb.PublishBatchRequest(entries=entries)
    topic = entries[0].topic if entries else ""
    check_request(daemon, stub, lambda **kw: stub.PublishBatch(request, **kw), topic=topic)


def test_publish_batch_over_the_entry_limit(daemon: Daemon, stub: rpc.MsgbusServiceStub) -> None:
    entries = [pb.PublishRequest(topic="too-many", payload=b"x") for _ in range(10_001)]
    code = check_request(
        daemon,
        stub,
        lambda **kw: stub.PublishBatch(pb.PublishBatchRequest(entries=entries), **kw),
        topic="too-many",
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_over_the_grpc_receive_limit(daemon: Daemon, stub: rpc.MsgbusServiceStub) -> None:
    # 40 MiB: above the daemon's 32 MiB receive limit, so gRPC itself refuses it.
    request = pb.PublishRequest(topic="huge", payload=b"h" * (40 * 1024 * 1024))
    code = check_request(daemon, stub, lambda **kw: stub.Publish(request, **kw), topic="huge")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@FUZZ
@given(topic=names, origin=node_ids, start=u64, limit=u32, pack=u32)
def test_fetch(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic: str,
    origin: pb.NodeId | None,
    start: int,
    limit: int,
    pack: int,
) -> None:
    request = pb.FetchRequest(
        topic=topic, from_head_id=start, limit=limit, max_messages_per_response=pack
    )
    with_node(request, "origin", origin)
    check_request(
        daemon,
        stub,
        lambda **kw: stub.Fetch(request, **kw),
        streaming="fetch",
        topic=topic,
        origin=origin,
    )


@settings(FUZZ, max_examples=25)
@given(topic=names, origin=node_ids, start=u64, page=u32, pack=u32)
def test_subscribe(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic: str,
    origin: pb.NodeId | None,
    start: int,
    page: int,
    pack: int,
) -> None:
    request = pb.SubscribeRequest(
        topic=topic, from_head_id=start, replay_limit=page, max_messages_per_response=pack
    )
    with_node(request, "origin", origin)
    check_request(
        daemon,
        stub,
        lambda **kw: stub.Subscribe(request, **kw),
        streaming="subscribe",
        topic=topic,
        origin=origin,
    )


@FUZZ
@given(topic=names, origin=node_ids)
def test_get_head(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, topic: str, origin: pb.NodeId | None
) -> None:
    request = with_node(pb.GetHeadRequest(topic=topic), "origin", origin)
    check_request(
        daemon, stub, lambda **kw: stub.GetHead(request, **kw), topic=topic, origin=origin
    )


@FUZZ
@given(topic=names, origin=node_ids, first=u64, last=u64)
def test_delete_range(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic: str,
    origin: pb.NodeId | None,
    first: int,
    last: int,
) -> None:
    request = pb.DeleteRangeRequest(topic=topic, from_head_id=first, to_head_id=last)
    with_node(request, "origin", origin)
    check_request(
        daemon, stub, lambda **kw: stub.DeleteRange(request, **kw), topic=topic, origin=origin
    )


@FUZZ
@given(
    queue=names,
    topic=names,
    source=node_ids,
    target=node_ids,
    payload=payloads,
    headers=header_maps,
)
def test_enqueue_fifo(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    queue: str,
    topic: str,
    source: pb.NodeId | None,
    target: pb.NodeId | None,
    payload: bytes,
    headers: dict[str, str],
) -> None:
    request = pb.EnqueueFifoRequest(queue=queue, topic=topic, payload=payload, headers=headers)
    with_node(request, "source", source)
    with_node(request, "target", target)
    check_request(daemon, stub, lambda **kw: stub.EnqueueFifo(request, **kw), queue=queue)


@FUZZ
@given(
    method=st.sampled_from(["PeekFifo", "AckFifo", "RejectFifo"]),
    queue=names,
    message_id=st.one_of(nasty, st.just("front")),
)
def test_fifo_reads_and_acks(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, method: str, queue: str, message_id: str
) -> None:
    if message_id == "front":
        # Sometimes the real front, so that some acks and rejects are accepted.
        reply = try_call(lambda: stub.PeekFifo(pb.PeekFifoRequest(queue=queue), timeout=30))
        message_id = reply.message.id if isinstance(reply, pb.PeekFifoResponse) else ""
    if method == "PeekFifo":
        peek = pb.PeekFifoRequest(queue=queue)
        check_request(daemon, stub, lambda **kw: stub.PeekFifo(peek, **kw), queue=queue)
    elif method == "AckFifo":
        ack = pb.AckFifoRequest(queue=queue, message_id=message_id)
        check_request(daemon, stub, lambda **kw: stub.AckFifo(ack, **kw), queue=queue)
    else:
        reject = pb.RejectFifoRequest(queue=queue, message_id=message_id)
        check_request(daemon, stub, lambda **kw: stub.RejectFifo(reject, **kw), queue=queue)


METHODS = {
    "Publish": "",
    "PublishBatch": "",
    "Fetch": "fetch",
    "Subscribe": "subscribe",
    "GetHead": "",
    "ListHeads": "",
    "ListPeerSyncStates": "",
    "DeleteRange": "",
    "EnqueueFifo": "",
    "PeekFifo": "",
    "AckFifo": "",
    "RejectFifo": "",
    "Health": "",
    "Ready": "",
    "PublishStream": "bidi",
    "Push": "bidi",
    "CommitCursor": "",
    "GetCursor": "",
    "ListCursors": "",
    "DeleteCursor": "",
    "LeaseFifo": "",
    "AckFifoLease": "",
    "RejectFifoLease": "",
    "ExtendFifoLease": "",
    "ListFifo": "",
    "RedriveFifo": "",
}


def test_every_rpc_is_fuzzed() -> None:
    """The table above names every RPC of the service."""
    service = pb.DESCRIPTOR.services_by_name["MsgbusService"]
    assert set(METHODS) == {method.name for method in service.methods}


@settings(FUZZ, max_examples=20)
@given(
    body=st.one_of(
        st.binary(max_size=512),
        st.sampled_from([b"\xff\xff\xff", b"\x0a\x02\xc3\x28", b"\x0a\x05ab", b"\x08" * 11]),
    )
)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_raw_random_bytes_as_the_request_body(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, method: str, body: bytes
) -> None:
    """Bodies that are not valid protobuf are INVALID_ARGUMENT (grpcio alone says UNKNOWN)."""
    channel = daemon.channel()
    path = f"/{SERVICE_NAME}/{method}"
    streaming = METHODS[method]
    call: Any
    if streaming == "bidi":
        stream = channel.stream_stream(path, request_serializer=None, response_deserializer=None)
        call = lambda **kw: stream(iter([body]), **kw)  # noqa: E731 - one request, then half-close
    elif streaming:
        unary_stream = channel.unary_stream(
            path, request_serializer=None, response_deserializer=None
        )
        call = lambda **kw: unary_stream(body, **kw)  # noqa: E731
    else:
        unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        call = lambda **kw: unary(body, **kw)  # noqa: E731
    check_request(daemon, stub, call, streaming=streaming)
    channel.close()


def test_undecodable_bodies_are_invalid_argument_not_unknown(daemon: Daemon) -> None:
    """Regression: grpcio answered UNKNOWN (and logged a traceback) for undecodable bodies."""
    channel = daemon.channel()
    publish = channel.unary_unary(
        f"/{SERVICE_NAME}/Publish", request_serializer=None, response_deserializer=None
    )
    fetch = channel.unary_stream(
        f"/{SERVICE_NAME}/Fetch", request_serializer=None, response_deserializer=None
    )
    for body in (b"\xff\xff\xff", b"\x0a\x02\xc3\x28"):
        with pytest.raises(grpc.RpcError) as info:
            publish(body, timeout=30)
        assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT
        assert "PublishRequest" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            list(fetch(body, timeout=30))
        assert status_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


# -- what a peer sends ----------------------------------------------------------------------------

PEER = NodeId("tenant", "default", "fuzzpeer")
THIRD = NodeId("tenant", "default", "third")


@dataclass
class Scenario:
    """What the fake peer serves during one example."""

    heads: list[pb.TopicHead] = field(default_factory=list)
    messages: dict[tuple[str, str], list[pb.MessageEnvelope]] = field(default_factory=dict)
    """What Fetch serves for each requested (topic, origin key), hostile fields included."""


LogHead = tuple[str, str, int]
"""(topic, origin key, head_id), as a served message's own fields say."""


class FuzzPeer(rpc.MsgbusServiceServicer):
    """Serves the current scenario to the daemon under test, whatever it contains."""

    def __init__(self) -> None:
        self.scenario = Scenario()
        self.list_calls = 0
        self.served: dict[LogHead, dict[bytes, pb.MessageEnvelope]] = {}
        """Every copy ever served, by the log and head it claims: what a stored row may be."""

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(
            status="SERVING",
            node=to_pb(PEER),
        )

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        self.list_calls += 1
        return pb.ListHeadsResponse(heads=self.scenario.heads)

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        messages = self.scenario.messages.get((request.topic, key_of(request.origin)), [])
        for message in messages:
            at = (message.topic, key_of(message.origin), message.head_id)
            self.served.setdefault(at, {})[message.SerializeToString()] = message
        if request.max_messages_per_response and len(messages) > 1:
            yield pb.FetchResponse(messages=messages[: len(messages) // 2])
            messages = messages[len(messages) // 2 :]
        for message in messages:
            yield pb.FetchResponse(message=message)


@dataclass
class PeerRig:
    daemon: Daemon
    peer: FuzzPeer
    endpoint: str


@pytest.fixture(scope="module", params=BACKENDS)
def peer_rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PeerRig]:
    backend = require_backend(request.param)
    servicer = FuzzPeer()  # type: ignore[abstract]  # serves only what sync calls
    with FakePeer(servicer) as fake:
        endpoint = fake.endpoint
        args = ["--peer", f"{endpoint}={PEER.key}", "--sync-interval-ms", "100"]
        data_dir: Path = tmp_path_factory.mktemp(f"peer-fuzz-{backend}")
        with Daemon.start(data_dir, storage=backend, extra_args=args) as daemon:
            yield PeerRig(daemon, servicer, endpoint)
            assert daemon.poll() is None, "the daemon died"
            assert "Traceback" not in daemon.stderr_text()


peer_origins = st.sampled_from(
    [PEER, THIRD, NodeId("tenant", "default", "device"), NodeId("", "default", "x")]
)
peer_topics = st.one_of(
    st.sampled_from(["p1", "p2"]),
    st.sampled_from(["p1", "p2", "$msgbus.delete", "$msgbus.other"]),
    nasty,
)


def marker_payloads(origin: NodeId) -> st.SearchStrategy[bytes]:
    """Delete marker payloads: well-formed, about someone else, or junk."""
    good = st.builds(
        lambda topic, o, a, b: json.dumps(
            {
                "topic": topic,
                "origin": {
                    "tenant_id": o.tenant_id,
                    "bl_name": o.bl_name,
                    "device_id": o.device_id,
                },
                "from_head_id": a,
                "to_head_id": b,
                "created_at_ms": 1,
            }
        ).encode(),
        st.sampled_from(["p1", "p2"]),
        st.sampled_from([origin, PEER, THIRD]),
        u64,
        u64,
    )
    return st.one_of(good, st.binary(max_size=40), st.just(b"{not json"), st.just(b"{}"))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Scenario, int]:
    """A few logs: heads that may lie, messages that may be malformed or mismatched."""
    scenario = Scenario()
    salt = draw(st.integers(0, 2**32))
    for _ in range(draw(st.integers(1, 3))):
        topic = draw(peer_topics)
        if topic in ("p1", "p2"):
            topic = f"{topic}-{salt}"  # fresh logs per example: no backoff from earlier ones
        origin = draw(peer_origins)
        count = draw(st.integers(1, 4))
        listed = draw(st.one_of(st.just(count), st.just(count), u64))
        head = pb.TopicHead(topic=topic, head_id=listed)
        if draw(st.booleans()) or origin.tenant_id:
            head.origin.CopyFrom(to_pb(origin))
        scenario.heads.append(head)
        served = scenario.messages.setdefault((topic, origin.key), [])
        for n in range(1, count + 1):
            marker = topic == "$msgbus.delete"
            message = pb.MessageEnvelope(
                id=f"id-{salt}-{topic}-{n}",
                topic=topic,
                head_id=n,
                payload=draw(marker_payloads(origin)) if marker else b"%d" % n,
                headers={"n": str(n)},
                created_at_ms=1_700_000_000_000 + n,
                deleted=False,
            )
            message.origin.CopyFrom(to_pb(origin))
            # Half the messages are honest; the others get one or more hostile fields.
            if draw(st.booleans()):
                for name in draw(st.lists(st.sampled_from(HOSTILE_FIELDS), min_size=1, max_size=3)):
                    _spoil(draw, message, name)
            served.append(message)
    return scenario, salt


HOSTILE_FIELDS = ("id", "topic", "origin", "head_id", "payload", "headers", "created", "deleted")
PEER_MAX_PAYLOAD = DEFAULT_MAX_PAYLOAD_BYTES
"""The limit of the daemon under test (started without --max-payload-bytes)."""
peer_payloads = st.one_of(
    payloads,
    # Above the daemon's own limit, as a peer with a larger --max-payload-bytes would send
    # them: just over it, a few times over it, and one far above the gRPC receive limit.
    st.sampled_from([PEER_MAX_PAYLOAD + 1, 3 * PEER_MAX_PAYLOAD, 40 * 1024 * 1024]).map(
        lambda n: b"z" * n
    ),
)


def _spoil(draw: st.DrawFn, message: pb.MessageEnvelope, name: str) -> None:
    """Replace one field of an honest message with something generated."""
    if name == "id":
        message.id = draw(nasty)
    elif name == "topic":
        message.topic = draw(peer_topics)
    elif name == "origin":
        if draw(st.booleans()):
            message.ClearField("origin")
        else:
            message.origin.CopyFrom(to_pb(draw(peer_origins)))
    elif name == "head_id":
        message.head_id = draw(u64)
    elif name == "payload":
        message.payload = draw(peer_payloads)
    elif name == "headers":
        message.headers.clear()
        message.headers.update(draw(header_maps))
    elif name == "created":
        message.created_at_ms = draw(u64)
    else:
        message.deleted = True


def served_copy(
    peer: FuzzPeer, topic: str, key: str, row: pb.MessageEnvelope
) -> pb.MessageEnvelope | None:
    """The served copy that a stored row is, field for field (erased when deleted), or None."""
    for copy in list(peer.served.get((topic, key, row.head_id), {}).values()):
        if (copy.id, copy.created_at_ms) != (row.id, row.created_at_ms):
            continue
        # A deleted row is a copy served deleted, or one that a tombstone erased.
        if row.deleted or (
            not copy.deleted
            and copy.payload == row.payload
            and dict(copy.headers) == dict(row.headers)
        ):
            return copy
    return None


def check_stored_rules(
    stub: rpc.MsgbusServiceStub, peer: FuzzPeer, log: tuple[str, str] | None = None
) -> int:
    """Everything stored (or only `log`) is a copy the peer served and obeys the rules; returns
    how many messages were checked."""
    checked = 0
    for (topic, key), head in heads(stub).items():
        if log is not None and (topic, key) != log:
            continue
        origin = NodeId.from_key(key)
        # The daemon under test publishes nothing itself: a log of its own came from the peer.
        assert key != "tenant/default/device", f"own log {topic} accepted from a peer"
        validate_topic(topic)
        origin.validate("origin")
        rows = fetch_log(stub, topic, origin)
        # Only its origin deletes a message, with a marker (held: markers are never trimmed
        # here).
        deletes = [
            TombstoneRange.from_marker_payload(m.payload)
            for m in fetch_log(stub, DELETE_TOPIC, origin)
            if topic != DELETE_TOPIC and not m.deleted
        ]
        check_log_shape(rows, f"{topic} from {key}")
        assert len(rows) == head
        for row in rows:
            assert (row.topic, key_of(row.origin)) == (topic, key)
            # The daemon neither alters nor mixes up what it accepts: the payload, headers, id
            # and timestamp are those of a copy served for this very head.
            copy = served_copy(peer, topic, key, row)
            assert copy is not None, f"{topic} from {key} head {row.head_id}: never served"
            broken = broken_rule(copy, PEER_MAX_PAYLOAD)
            assert broken is None, f"a spoiled message was stored ({broken}): {copy}"
            if row.headers:
                validate_headers(dict(row.headers))
                assert len(row.headers) <= MAX_HEADER_ENTRIES
                assert sum(len(k) + len(v) for k, v in row.headers.items()) <= MAX_HEADER_BYTES
            if topic == "$msgbus.delete" and not row.deleted:
                marker = TombstoneRange.from_marker_payload(row.payload)
                assert marker.origin == origin, "a marker deleting another node's log"
            if row.deleted and topic != DELETE_TOPIC:
                assert any(
                    t.topic == topic and t.from_head_id <= row.head_id <= t.to_head_id
                    for t in deletes
                ), f"{topic} from {key} head {row.head_id}: deleted without a marker of {key}"
            checked += 1
    return checked


@settings(FUZZ, max_examples=20)
@given(case=scenarios())
def test_what_a_peer_sends(peer_rig: PeerRig, case: tuple[Scenario, int]) -> None:
    global inputs_tried, peer_messages_checked
    scenario, _ = case
    inputs_tried += 1
    rig = peer_rig
    rig.peer.scenario = scenario
    stub = rig.daemon.stub()
    # Two ListHeads after the switch: one whole pass ran against this scenario.
    seen = rig.peer.list_calls
    wait_until(lambda: rig.peer.list_calls >= seen + 2, message="a sync pass over the scenario")
    assert rig.daemon.poll() is None, "the daemon died"
    peer_messages_checked = max(peer_messages_checked, check_stored_rules(stub, rig.peer))
    stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=30)


def test_an_honest_peer_scenario_is_stored(peer_rig: PeerRig) -> None:
    """The control for the fuzzing peer: honest data does get in, and the checks see it."""
    topic = "honest-control"
    messages = []
    for n in (1, 2, 3):
        message = pb.MessageEnvelope(
            id=f"honest-{n}", topic=topic, head_id=n, payload=b"%d" % n, created_at_ms=n
        )
        message.origin.CopyFrom(to_pb(PEER))
        messages.append(message)
    head = pb.TopicHead(topic=topic, origin=to_pb(PEER), head_id=3)
    peer_rig.peer.scenario = Scenario(heads=[head], messages={(topic, PEER.key): messages})
    stub = peer_rig.daemon.stub()
    wait_until(lambda: len(fetch_log(stub, topic, PEER)) == 3, message="the honest log")
    rows = fetch_log(stub, topic, PEER)
    assert [r.payload for r in rows] == [b"1", b"2", b"3"]
    assert check_stored_rules(stub, peer_rig.peer) >= 3


SPOILS: dict[str, Any] = {
    "empty-id": lambda m: setattr(m, "id", ""),
    "control-id": lambda m: setattr(m, "id", "a\x00b"),
    "other-topic": lambda m: setattr(m, "topic", "elsewhere"),
    "no-origin": lambda m: m.ClearField("origin"),
    "created-over-i64": lambda m: setattr(m, "created_at_ms", 2**63),
    "too-many-headers": lambda m: m.headers.update({f"k{i}": "v" for i in range(65)}),
    "headers-over-16k": lambda m: m.headers.update({"big": "v" * (16 * 1024)}),
    "nul-header": lambda m: m.headers.update({"k\x00": "v"}),
    "payload-over-the-limit": lambda m: setattr(m, "payload", b"z" * (PEER_MAX_PAYLOAD + 1)),
    "payload-of-20-mib": lambda m: setattr(m, "payload", b"z" * (20 * 1024 * 1024)),
    "payload-over-the-receive-limit": lambda m: setattr(m, "payload", b"z" * (40 * 1024 * 1024)),
    "marker-not-json": lambda m: setattr(m, "payload", b"{not json"),
    "marker-for-another-origin": lambda m: setattr(
        m, "payload", TombstoneRange("p1", THIRD, 1, 1, 1).to_marker_payload()
    ),
    "marker-sent-deleted": lambda m: setattr(m, "deleted", True),
    "deleted-without-a-marker": lambda m: setattr(m, "deleted", True),
}
"""One rule broken per message, the rest of it honest: stored only if that rule is missing."""


@pytest.mark.parametrize("spoil", sorted(SPOILS))
def test_a_message_spoiled_in_one_field_is_not_stored(peer_rig: PeerRig, spoil: str) -> None:
    """Head 2 of an honest log breaks one rule: the refusal is recorded, nothing from head 2
    on is stored.

    The fuzzing test above draws such messages at random; this one serves each for sure, so
    that dropping any one rule from the daemon fails the suite (and `check_stored_rules` with
    it) whatever Hypothesis happens to draw.
    """
    marker = spoil.startswith("marker")
    origin = NodeId("tenant", "default", f"spoil-{spoil}") if marker else PEER
    topic = DELETE_TOPIC if marker else f"spoil-{spoil}"
    messages = []
    for n in (1, 2, 3):
        payload = TombstoneRange("p1", origin, n, n, 1).to_marker_payload() if marker else b"%d" % n
        message = pb.MessageEnvelope(
            id=f"spoil-{spoil}-{n}", topic=topic, head_id=n, payload=payload, created_at_ms=n
        )
        message.origin.CopyFrom(to_pb(origin))
        if n == 2:
            SPOILS[spoil](message)
        messages.append(message)
    head = pb.TopicHead(topic=topic, origin=to_pb(origin), head_id=3)
    peer = peer_rig.peer
    peer.scenario = Scenario(heads=[head], messages={(topic, origin.key): messages})
    stub = peer_rig.daemon.stub()

    def refusal() -> str:
        states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=30).states
        mine = [s for s in states if (s.topic, key_of(s.origin)) == (topic, origin.key)]
        return mine[0].last_error if mine else ""

    wait_until(refusal, message="the refusal of the spoiled log to be recorded")
    # One more whole pass: whatever the daemon would take from head 2 on, it has taken.
    seen = peer.list_calls
    wait_until(lambda: peer.list_calls >= seen + 2, message="a sync pass after the refusal")
    check_stored_rules(stub, peer, (topic, origin.key))
    stored = heads(stub).get((topic, origin.key), 0)
    assert stored <= 1, f"stored past the spoiled head 2 ({spoil}): head {stored}"


def test_report_inputs_tried() -> None:
    """Not a check: prints how many hostile requests this worker sent (for the README)."""
    print(
        f"hostile requests tried on this worker: {inputs_tried}; "
        f"messages accepted from the fuzzing peer and checked: {peer_messages_checked}"
    )
