"""publish_batch on both clients, and the async client's coalescing of concurrent publishes.

Real daemons (SQLite files) through the server's harness; the fallback test runs a tiny grpc.aio
server of its own that, like an original daemon, implements Publish but not PublishBatch.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import grpc.aio
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    BatchEntry,
    ConfigurationError,
    InvalidArgumentError,
    MessageEnvelope,
    MsgbusClient,
    MsgbusError,
    NodeId,
    PermissionDeniedError,
    PublishEntry,
    UnimplementedError,
)
from msgbus_sdk._idempotency import BatchAnswer, BatchRequest
from msgbus_server.testing import Daemon
from msgbus_testkit.peers import in_process_server

LOCAL = NodeId(tenant_id="tenant", bl_name="default", device_id="device")


@pytest.fixture
async def bus(daemon: Daemon) -> AsyncIterator[AsyncMsgbusClient]:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as client:
        yield client


@pytest.fixture
def sync_bus(daemon: Daemon) -> Iterator[MsgbusClient]:
    with MsgbusClient.connect(daemon.endpoint) as client:
        yield client


class BatchSpy:
    """Counts the PublishBatch calls a client's coalescer makes (the calls themselves are real)."""

    def __init__(self, client: AsyncMsgbusClient) -> None:
        coalescer = client._coalescer
        assert coalescer is not None
        self.sizes: list[int] = []
        real: Callable[[BatchRequest], Awaitable[BatchAnswer]]
        real = coalescer._publish_batch

        async def counting(request: BatchRequest) -> BatchAnswer:
            self.sizes.append(len(request.entries))
            return await real(request)

        coalescer._publish_batch = counting


# -- publish_batch --------------------------------------------------------------------------------


async def test_publish_batch_returns_one_envelope_per_entry_in_order(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    other = f"{topic}.other"
    entries: list[BatchEntry] = [
        PublishEntry(topic, b"a", {"k": "1"}),
        (other, "b"),
        (topic, b"c", None),
        PublishEntry(other, bytearray(b"d")),
        (topic, memoryview(b"e"), {"k": "2"}),
    ]
    sent = await bus.publish_batch(entries)
    assert [(m.topic, m.head_id, m.payload) for m in sent] == [
        (topic, 1, b"a"),
        (other, 1, b"b"),
        (topic, 2, b"c"),
        (other, 2, b"d"),
        (topic, 3, b"e"),
    ]
    assert [m.headers for m in sent] == [{"k": "1"}, {}, {}, {}, {"k": "2"}]
    assert all(m.origin == LOCAL and len(m.id) == 36 and m.created_at_ms > 0 for m in sent)
    assert len({m.id for m in sent}) == len(sent)
    # What the batch answered is what was stored.
    assert await bus.fetch(topic) == [sent[0], sent[2], sent[4]]
    assert await bus.fetch(other) == [sent[1], sent[3]]


async def test_publish_batch_appends_after_single_publishes(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    first = await bus.publish(topic, b"single")
    batch = await bus.publish_batch([(topic, b"x"), (topic, b"y")])
    last = await bus.publish(topic, b"after")
    assert [first.head_id, *(m.head_id for m in batch), last.head_id] == [1, 2, 3, 4]


async def test_publish_batch_rejects_the_whole_batch_naming_the_bad_entry(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    other = f"{topic}.other"
    await bus.publish(topic, b"before")
    with pytest.raises(InvalidArgumentError) as info:
        await bus.publish_batch([(topic, b"ok"), (other, b"ok"), ("", b"bad"), (topic, b"ok")])
    assert "entries[2]" in info.value.message
    assert "topic" in info.value.message
    with pytest.raises(PermissionDeniedError) as denied:
        await bus.publish_batch([(topic, b"ok"), ("$msgbus.delete", b"reserved")])
    assert "entries[1]" in denied.value.message
    # Atomic: nothing of either rejected batch was stored.
    assert (await bus.get_head(topic)).head_id == 1
    assert not (await bus.get_head(other)).found


async def test_publish_batch_of_nothing_makes_no_call_and_malformed_entries_fail_locally(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    assert await bus.publish_batch([]) == []
    with pytest.raises(ConfigurationError, match=r"entries\[1\]"):
        await bus.publish_batch([(topic, b"ok"), (topic,)])  # type: ignore[list-item]
    assert not (await bus.get_head(topic)).found


def test_sync_publish_batch(sync_bus: MsgbusClient, topic: str) -> None:
    other = f"{topic}.other"
    sent = sync_bus.publish_batch(
        [PublishEntry(topic, b"a"), (other, b"b", {"h": "v"}), (topic, "c")]
    )
    assert [(m.topic, m.head_id, m.payload, m.headers) for m in sent] == [
        (topic, 1, b"a", {}),
        (other, 1, b"b", {"h": "v"}),
        (topic, 2, b"c", {}),
    ]
    assert sync_bus.fetch(topic) == [sent[0], sent[2]]
    assert sync_bus.publish_batch(()) == []


def test_sync_publish_batch_error_names_the_entry_and_stores_nothing(
    sync_bus: MsgbusClient, topic: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        sync_bus.publish_batch([(topic, b"ok"), (topic, b"ok", {"": "empty key"})])
    assert "entries[1].headers" in info.value.message
    assert not sync_bus.get_head(topic).found


# -- coalescing -----------------------------------------------------------------------------------


async def test_concurrent_publishes_each_get_their_own_envelope(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    spy = BatchSpy(bus)
    count = 2000
    payloads = [f"message {i}".encode() for i in range(count)]
    sent = await asyncio.gather(
        *(bus.publish(topic, p, {"i": str(i)}) for i, p in enumerate(payloads))
    )
    assert [m.payload for m in sent] == payloads
    assert [m.headers for m in sent] == [{"i": str(i)} for i in range(count)]
    assert sorted(m.head_id for m in sent) == list(range(1, count + 1))
    assert len({m.id for m in sent}) == count
    # Each caller's envelope is the stored message at its head_id.
    stored = [m async for m in bus.iter_fetch(topic)]
    assert stored == sorted(sent, key=lambda m: m.head_id)
    # The first went out at once, alone, from its caller's task (the client was idle); the
    # others travelled in batches, not one call each.
    assert sum(spy.sizes) == count - 1
    assert max(spy.sizes) > 1
    assert bus.coalesces_publishes


async def test_sequential_publishes_keep_their_order(bus: AsyncMsgbusClient, topic: str) -> None:
    sent = [await bus.publish(topic, str(i)) for i in range(30)]
    assert [(m.head_id, m.payload) for m in sent] == [(i + 1, str(i).encode()) for i in range(30)]


async def test_concurrent_publishers_keep_each_ones_order(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    async def publisher(name: str) -> list[MessageEnvelope]:
        return [await bus.publish(topic, f"{name}:{i}") for i in range(40)]

    results = await asyncio.gather(*(publisher(f"p{n}") for n in range(16)))
    for sent in results:
        heads = [m.head_id for m in sent]
        assert heads == sorted(heads)
    assert sorted(m.head_id for sent in results for m in sent) == list(range(1, 16 * 40 + 1))


async def test_one_invalid_publish_among_many_fails_alone(
    daemon: Daemon, bus: AsyncMsgbusClient, topic: str
) -> None:
    spy = BatchSpy(bus)
    count = 500
    bad = {137: "", 138: "$msgbus.delete", 400: "x" * 300}

    async def one(i: int) -> MessageEnvelope:
        return await bus.publish(bad.get(i, topic), f"m{i}")

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    # The bad ones fail with exactly the error a lone publish of the same message gets.
    async with await AsyncMsgbusClient.connect(daemon.endpoint, coalesce_publishes=False) as plain:
        for i, bad_topic in bad.items():
            error = results[i]
            assert isinstance(error, MsgbusError)
            with pytest.raises(MsgbusError) as lone:
                await plain.publish(bad_topic, f"m{i}")
            assert (type(error), error.code, error.message) == (
                type(lone.value),
                lone.value.code,
                lone.value.message,
            )
    good = [r for i, r in enumerate(results) if i not in bad]
    assert all(isinstance(r, MessageEnvelope) for r in good)
    envelopes = [r for r in good if isinstance(r, MessageEnvelope)]
    assert [m.payload for m in envelopes] == [
        f"m{i}".encode() for i in range(count) if i not in bad
    ]
    assert sorted(m.head_id for m in envelopes) == list(range(1, count - len(bad) + 1))
    assert (await bus.get_head(topic)).head_id == count - len(bad)
    assert max(spy.sizes) > 1


async def test_an_invalid_publish_that_echoes_another_index_still_fails_alone(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    # The daemon's message names this entry first, then echoes the key "entries[0]".
    bad_headers = {"entries[0]": "nul\x00"}
    results = await asyncio.gather(
        *(bus.publish(topic, str(i), bad_headers if i == 20 else None) for i in range(50)),
        return_exceptions=True,
    )
    error = results[20]
    assert isinstance(error, InvalidArgumentError)
    assert "NUL" in error.message
    assert "entries[" not in error.message.split("headers")[0]
    envelopes = [r for i, r in enumerate(results) if i != 20]
    assert all(isinstance(r, MessageEnvelope) for r in envelopes)
    assert (await bus.get_head(topic)).head_id == 49


async def test_publishes_without_coalescing_still_work(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, coalesce_publishes=False) as client:
        assert not client.coalesces_publishes
        assert client._coalescer is None
        sent = await asyncio.gather(*(client.publish(topic, str(i)) for i in range(300)))
        assert [m.payload for m in sent] == [str(i).encode() for i in range(300)]
        assert sorted(m.head_id for m in sent) == list(range(1, 301))
        with pytest.raises(InvalidArgumentError):
            await client.publish("", b"x")
        # publish_batch does not depend on coalescing.
        assert [m.head_id for m in await client.publish_batch([(topic, b"z")])] == [301]


async def test_publish_on_a_closed_client_fails(daemon: Daemon, topic: str) -> None:
    client = await AsyncMsgbusClient.connect(daemon.endpoint)
    await client.close()
    with pytest.raises(ConfigurationError, match="closed"):
        await client.publish(topic, b"x")
    with pytest.raises(ConfigurationError, match="closed"):
        await client.publish_batch([(topic, b"x")])


# -- a daemon without PublishBatch ----------------------------------------------------------------


class OriginalDaemon(rpc.MsgbusServiceServicer):
    """Health and Publish only, like a daemon that predates PublishBatch."""

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.publishes = 0

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        node = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
        return pb.HealthResponse(status="SERVING", node=node)

    async def Publish(
        self,
        request: pb.PublishRequest,
        context: grpc.aio.ServicerContext[pb.PublishRequest, pb.PublishResponse],
    ) -> pb.PublishResponse:
        if not request.topic:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "topic is empty")
        self.publishes += 1
        head = self.heads[request.topic] = self.heads.get(request.topic, 0) + 1
        message = pb.MessageEnvelope(
            id=f"id-{next(self.ids)}",
            topic=request.topic,
            head_id=head,
            payload=request.payload,
            headers=request.headers,
        )
        return pb.PublishResponse(message=message)


@pytest.fixture
async def original() -> AsyncIterator[tuple[str, OriginalDaemon]]:
    # The RPCs it leaves out (PublishBatch among them) answer UNIMPLEMENTED: that is the point.
    servicer = OriginalDaemon()  # type: ignore[abstract]
    async with in_process_server(servicer) as endpoint:
        yield endpoint, servicer


async def test_coalescing_falls_back_to_publish_for_good_on_an_original_daemon(
    original: tuple[str, OriginalDaemon],
) -> None:
    endpoint, servicer = original
    async with await AsyncMsgbusClient.connect(endpoint) as client:
        assert client.coalesces_publishes
        count = 300
        results = await asyncio.gather(
            *(client.publish("t" if i != 5 else "", str(i)) for i in range(count)),
            return_exceptions=True,
        )
        assert not client.coalesces_publishes
        error = results[5]
        assert isinstance(error, InvalidArgumentError)
        assert error.message == "topic is empty"
        envelopes = [r for i, r in enumerate(results) if i != 5]
        assert all(isinstance(r, MessageEnvelope) for r in envelopes)
        assert [r.payload for r in envelopes if isinstance(r, MessageEnvelope)] == [
            str(i).encode() for i in range(count) if i != 5
        ]
        # Each publish reached the daemon exactly once: none lost, none duplicated.
        assert servicer.publishes == count - 1
        assert servicer.heads == {"t": count - 1}
        assert sorted(r.head_id for r in envelopes if isinstance(r, MessageEnvelope)) == list(
            range(1, count)
        )
        # Later publishes go straight to Publish; an explicit batch cannot be emulated
        # atomically, so it says the daemon lacks it.
        more = await asyncio.gather(*(client.publish("t", b"more") for _ in range(10)))
        assert [m.head_id for m in more] == list(range(count, count + 10))
        with pytest.raises(UnimplementedError):
            await client.publish_batch([("t", b"x")])
        assert servicer.publishes == count + 9
