"""The contract extensions of issue 7 against real daemons: PublishBatch, opt-in packing of Fetch
and Subscribe responses, packed peer sync, and bursts of concurrent unary calls.

Packing is checked by equivalence: a packed read must deliver exactly the envelopes (same
messages, same order, nothing missing or repeated at a packing boundary) that the original
one-per-response read delivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.logs import publish
from msgbus_testkit.nodes import LOCAL
from msgbus_testkit.peers import FakePeer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


def _fill(stub: rpc.MsgbusServiceStub, topic: str, sizes: list[int]) -> list[pb.MessageEnvelope]:
    """Publish one message per size (payload bytes), in batches; return the stored envelopes."""
    stored: list[pb.MessageEnvelope] = []
    for start in range(0, len(sizes), 500):
        entries = [
            pb.PublishRequest(topic=topic, payload=bytes([i % 251]) * size, headers={"i": str(i)})
            for i, size in enumerate(sizes[start : start + 500], start)
        ]
        reply = stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120)
        stored.extend(reply.messages)
    return stored


def _fetch_responses(stub: rpc.MsgbusServiceStub, **fields: Any) -> list[pb.FetchResponse]:
    return list(stub.Fetch(pb.FetchRequest(**fields), timeout=60))


def _unpacked(responses: list[pb.FetchResponse]) -> list[pb.MessageEnvelope]:
    """The envelopes of original-form responses, checking each carries exactly one."""
    for response in responses:
        assert response.HasField("message")
        assert len(response.messages) == 0
    return [response.message for response in responses]


def _packed(responses: list[pb.FetchResponse], pack: int) -> list[pb.MessageEnvelope]:
    """The envelopes of packed responses, checking each carries 1..pack and no `message`."""
    for response in responses:
        assert not response.HasField("message")
        assert 1 <= len(response.messages) <= pack
    return [message for response in responses for message in response.messages]


# -- PublishBatch ---------------------------------------------------------------------------------


def test_publish_batch_answers_each_entry_with_what_was_stored(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topics = [name("a"), name("b"), name("c")]
    publish(stub, topics[1], b"earlier")
    entries = [
        pb.PublishRequest(
            topic=topics[i % 3], payload=b"p%d" % i, headers={"n": str(i)} if i % 2 else {}
        )
        for i in range(60)
    ]
    reply = stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    assert len(reply.messages) == 60
    # In request order, each with its own id and consecutive heads per log.
    assert [(m.topic, m.payload, dict(m.headers)) for m in reply.messages] == [
        (e.topic, e.payload, dict(e.headers)) for e in entries
    ]
    assert len({m.id for m in reply.messages}) == 60
    assert all(m.origin == LOCAL and not m.deleted for m in reply.messages)
    for offset, topic in enumerate(topics):
        mine = [m for m in reply.messages if m.topic == topic]
        first = 2 if offset == 1 else 1
        assert [m.head_id for m in mine] == list(range(first, first + 20))
        stored = [r.message for r in stub.Fetch(pb.FetchRequest(topic=topic, from_head_id=first))]
        assert stored == mine


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (pb.PublishRequest(topic=""), INVALID),
        (pb.PublishRequest(topic="ok", headers={"k": "\x00"}), INVALID),
        (pb.PublishRequest(topic="$msgbus.anything"), DENIED),
    ],
    ids=["topic", "header", "reserved"],
)
def test_a_rejected_batch_names_its_first_bad_entry_and_stores_nothing_in_any_log(
    stub: rpc.MsgbusServiceStub,
    name: Callable[[str], str],
    bad: pb.PublishRequest,
    code: grpc.StatusCode,
) -> None:
    a, b = name("a"), name("b")
    publish(stub, a, b"a1")
    publish(stub, b, b"b1")
    entries = [
        pb.PublishRequest(topic=a, payload=b"x"),
        pb.PublishRequest(topic=b, payload=b"x"),
        pb.PublishRequest(topic=a, payload=b"x"),
        bad,
        pb.PublishRequest(topic=b, payload=b"x"),
        pb.PublishRequest(topic=""),  # a second bad entry: the first one is named
    ]
    with pytest.raises(grpc.RpcError) as info:
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    assert info.value.code() == code
    details = info.value.details() or ""
    assert "entries[3]" in details
    assert "entries[5]" not in details
    for topic in (a, b):
        assert stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id == 1
    # No head_id was consumed by the rejected batch: the logs continue without a gap.
    reply = stub.PublishBatch(pb.PublishBatchRequest(entries=[entries[0], entries[1]]))
    assert [(m.topic, m.head_id) for m in reply.messages] == [(a, 2), (b, 2)]


# -- packed Fetch and Subscribe ------------------------------------------------------------------


def test_packed_fetch_delivers_exactly_what_unpacked_fetch_does(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("packfetch")
    # Sizes vary so that store read chunks, the per-response count and the byte budget all
    # cut the page at different places.
    sizes = [(i * 37) % 700 if i % 50 else 4000 for i in range(1300)]
    stored = _fill(stub, topic, sizes)
    for from_head, limit in ((1, 1300), (2, 129), (127, 700), (1200, 5000)):
        plain = _unpacked(_fetch_responses(stub, topic=topic, from_head_id=from_head, limit=limit))
        assert plain == stored[from_head - 1 : from_head - 1 + limit]
        for pack in (1, 7, 128, 256, 10_000):
            responses = _fetch_responses(
                stub,
                topic=topic,
                from_head_id=from_head,
                limit=limit,
                max_messages_per_response=pack,
            )
            assert _packed(responses, pack) == plain, (from_head, limit, pack)


def test_packed_fetch_splits_by_bytes_under_the_grpc_message_limit(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("packbytes")
    stored = _fill(stub, topic, [4000] * 1500)  # ~6 MB: more than one 4 MiB gRPC message
    responses = _fetch_responses(stub, topic=topic, limit=1500, max_messages_per_response=10_000)
    assert _packed(responses, 10_000) == stored
    assert len(responses) >= 2
    assert all(response.ByteSize() < 4 * 1024 * 1024 for response in responses)


def test_an_original_client_gets_one_message_per_response(
    shared_daemon: Daemon, stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("original")
    stored = _fill(stub, topic, [10] * 300)
    # A request with only the original fields, as a client built on the original contract
    # sends it: field 5 is absent on the wire.
    request = pb.FetchRequest(topic=topic, limit=300)
    assert not request.max_messages_per_response
    assert _unpacked(list(stub.Fetch(request))) == stored

    async def subscribe() -> list[pb.SubscribeResponse]:
        async with shared_daemon.aio_channel() as channel:
            call = rpc.MsgbusServiceStub(channel).Subscribe(
                pb.SubscribeRequest(topic=topic, replay_limit=1000)
            )
            responses = []
            async for response in call:
                responses.append(response)
                if len(responses) == 300:
                    break
            call.cancel()
            return responses

    responses = asyncio.run(subscribe())
    assert all(r.HasField("message") and len(r.messages) == 0 for r in responses)
    assert [r.message for r in responses] == stored


async def _subscribe_envelopes(
    daemon: Daemon, topic: str, pack: int, count: int, live: Callable[[], None] | None = None
) -> list[pb.MessageEnvelope]:
    """Subscribe from head 1 and collect `count` envelopes; `live` runs once the replay ends."""
    async with daemon.aio_channel() as channel:
        request = pb.SubscribeRequest(topic=topic, replay_limit=100, max_messages_per_response=pack)
        call = rpc.MsgbusServiceStub(channel).Subscribe(request)
        received: list[pb.MessageEnvelope] = []
        started_live = False
        async for response in call:
            if pack:
                assert not response.HasField("message")
                assert 1 <= len(response.messages) <= pack
                received.extend(response.messages)
            else:
                assert len(response.messages) == 0
                received.append(response.message)
            if live is not None and not started_live and len(received) >= 700:
                started_live = True
                await asyncio.to_thread(live)
            if len(received) >= count:
                break
        call.cancel()
    return received


async def test_packed_subscribe_delivers_exactly_what_unpacked_subscribe_does(
    shared_daemon: Daemon, name: Callable[[str], str]
) -> None:
    topic = name("packsub")
    stub = shared_daemon.stub()
    stored = _fill(stub, topic, [(i * 53) % 900 for i in range(700)])
    added: list[pb.MessageEnvelope] = []

    def publish_live() -> None:
        # Published after the replay: these arrive through the live path, in small commits
        # and one batch, so live packs have other boundaries than replay pages.
        for i in range(20):
            added.append(publish(stub, topic, b"live %d" % i))
        added.extend(_fill(stub, topic, [30] * 280))

    packed = await _subscribe_envelopes(shared_daemon, topic, 64, 1000, publish_live)
    assert len(added) == 300
    everything = stored + added
    assert [m.head_id for m in everything] == list(range(1, 1001))
    assert packed == everything
    # Replaying the same log through the original, unpacked form gives the same envelopes.
    assert await _subscribe_envelopes(shared_daemon, topic, 0, 1000) == everything
    assert await _subscribe_envelopes(shared_daemon, topic, 1, 1000) == everything


# -- peer sync -------------------------------------------------------------------------------------


class RecordingProxy(rpc.MsgbusServiceServicer):
    """Forwards what peer sync calls (Health, ListHeads, Fetch) to a real daemon and records
    the Fetch requests and the shape of every Fetch response."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fetch_packing: list[int] = []
        self.response_sizes: list[int] = []
        self.unpacked_responses = 0
        self._stub: Any = None

    def _peer(self) -> Any:
        if self._stub is None:
            self._stub = rpc.MsgbusServiceStub(grpc.aio.insecure_channel(self.upstream))
        return self._stub

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        response: pb.HealthResponse = await self._peer().Health(request, timeout=10)
        return response

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        response: pb.ListHeadsResponse = await self._peer().ListHeads(request, timeout=10)
        return response

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.fetch_packing.append(request.max_messages_per_response)
        async for response in self._peer().Fetch(request, timeout=60):
            if response.HasField("message"):
                self.unpacked_responses += 1
            self.response_sizes.append(len(response.messages))
            yield response


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Daemon]:
    with Daemon.start(tmp_path / "source", node="tenant/default/source") as daemon:
        yield daemon


def test_sync_between_two_daemons_uses_packed_responses(tmp_path: Path, source: Daemon) -> None:
    topic = "synced.events"
    stored = _fill(source.stub(), topic, [(i * 29) % 600 for i in range(1800)])
    proxy = RecordingProxy(source.endpoint)  # type: ignore[abstract]  # the rest: UNIMPLEMENTED
    with (
        FakePeer(proxy) as server,
        Daemon.start(
            tmp_path / "follower",
            node="tenant/default/follower",
            extra_args=[
                "--peer",
                f"{server.endpoint}=tenant/default/source",
                "--sync-interval-ms",
                "100",
            ],
        ) as follower,
    ):
        stub = follower.stub()
        origin = stored[0].origin
        wait_until(
            lambda: stub.GetHead(pb.GetHeadRequest(topic=topic, origin=origin)).head_id == 1800,
            message="the follower to catch up",
            timeout=120,
        )
        copied = [
            r.message for r in stub.Fetch(pb.FetchRequest(topic=topic, origin=origin, limit=10_000))
        ]
    assert copied == stored
    # The follower asked for packing on every Fetch, and the source answered packed.
    assert proxy.fetch_packing
    assert all(pack > 0 for pack in proxy.fetch_packing)
    assert proxy.unpacked_responses == 0
    assert max(proxy.response_sizes) > 1
    assert sum(proxy.response_sizes) >= 1800


# -- bursts of concurrent calls --------------------------------------------------------------------


async def test_a_burst_of_concurrent_unary_calls_is_served_not_cancelled(tmp_path: Path) -> None:
    """Thousands of Publish calls in flight from one channel all complete.

    grpc.aio picks calls up one at a time, so a burst waits in gRPC core's pending-call backlog.
    With its defaults (shed at random beyond 1,000 pending, all beyond 3,000) a burst of 2,000
    lost 6-9 % of its calls as CANCELLED before they reached a handler; msgbusd raises them.
    """
    count = 3000
    daemon = await asyncio.to_thread(Daemon.start, tmp_path)
    try:
        async with daemon.aio_channel() as channel:
            stub = rpc.MsgbusServiceStub(channel)
            results = await asyncio.gather(
                *(
                    stub.Publish(pb.PublishRequest(topic="burst", payload=b"%d" % i), timeout=120)
                    for i in range(count)
                ),
                return_exceptions=True,
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        heads = sorted(r.message.head_id for r in results if isinstance(r, pb.PublishResponse))
        assert heads == list(range(1, count + 1))
    finally:
        await asyncio.to_thread(daemon.stop)
