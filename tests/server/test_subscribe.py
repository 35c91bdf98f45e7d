"""Subscribe: replay then live, no gap, no duplicate, under backlog and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.logs import publish


async def _collect(
    stub: rpc.MsgbusServiceAsyncStub, request: pb.SubscribeRequest, count: int
) -> list[pb.MessageEnvelope]:
    """Read a subscription until `count` messages arrived (packed or not)."""
    received: list[pb.MessageEnvelope] = []
    call = stub.Subscribe(request)
    try:
        async for response in call:
            if response.HasField("message"):
                received.append(response.message)
            received.extend(response.messages)
            if len(received) >= count:
                break
    finally:
        call.cancel()
    return received


async def test_backlog_longer_than_replay_limit_then_live(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    topic = name("backlog")
    with Daemon.start(tmp_path, storage=backend) as daemon:
        stub = daemon.stub()
        for start in range(0, 10_000, 5_000):
            entries = [
                pb.PublishRequest(topic=topic, payload=b"%d" % i)
                for i in range(start + 1, start + 5_001)
            ]
            stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120)
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            request = pb.SubscribeRequest(topic=topic, from_head_id=1, replay_limit=10)
            reader = asyncio.create_task(_collect(astub, request, 10_050))

            # Live messages, published while (or after) the backlog is replayed.
            async def live() -> None:
                for i in range(10_001, 10_051):
                    reply = await astub.Publish(
                        pb.PublishRequest(topic=topic, payload=b"%d" % i), timeout=60
                    )
                    assert reply.message.head_id == i

            await live()
            received = await asyncio.wait_for(reader, 300)
    heads = [m.head_id for m in received]
    assert heads == list(range(1, 10_051))
    assert [m.payload for m in received] == [b"%d" % i for i in range(1, 10_051)]


async def test_concurrent_publishers_and_subscribers(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    topic = name("hot")
    publishers, per_publisher, subscribers = 16, 40, 4
    total = publishers * per_publisher
    with Daemon.start(tmp_path, storage=backend) as daemon:
        async with daemon.aio_channel() as channel:
            stub = rpc.MsgbusServiceStub(channel)
            readers = [
                asyncio.create_task(
                    _collect(
                        stub,
                        pb.SubscribeRequest(topic=topic, replay_limit=7 + i),
                        total,
                    )
                )
                for i in range(subscribers)
            ]

            async def publisher(index: int) -> list[int]:
                heads = []
                for j in range(per_publisher):
                    reply = await stub.Publish(
                        pb.PublishRequest(topic=topic, payload=f"{index}-{j}".encode()), timeout=60
                    )
                    heads.append(reply.message.head_id)
                return heads

            published = await asyncio.gather(*(publisher(i) for i in range(publishers)))
            results = await asyncio.wait_for(asyncio.gather(*readers), 300)
    assert sorted(h for heads in published for h in heads) == list(range(1, total + 1))
    for received in results:
        assert [m.head_id for m in received] == list(range(1, total + 1))
    # Every subscriber saw the same stored messages.
    assert len({tuple(m.id for m in r) for r in results}) == 1


async def test_packed_subscription(shared_daemon: Daemon, name: Callable[[str], str]) -> None:
    topic = name("packsub")
    stub = shared_daemon.stub()
    entries = [pb.PublishRequest(topic=topic, payload=b"%d" % i) for i in range(30)]
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    async with shared_daemon.aio_channel() as channel:
        astub = rpc.MsgbusServiceStub(channel)
        request = pb.SubscribeRequest(topic=topic, replay_limit=30, max_messages_per_response=8)
        call = astub.Subscribe(request)
        sizes: list[int] = []
        heads: list[int] = []
        async for response in call:
            assert not response.HasField("message")
            sizes.append(len(response.messages))
            heads.extend(m.head_id for m in response.messages)
            if len(heads) >= 30:
                break
        call.cancel()
    assert heads == list(range(1, 31))
    assert max(sizes) == 8


async def test_a_live_commit_larger_than_one_read_is_delivered_whole(
    tmp_path: Path, backend: str
) -> None:
    """One commit of ~19 MiB reaches a caught-up subscriber in several byte-sized reads: a read
    cut short by the 8 MiB budget must not make the stream wait for a commit that never comes."""
    with Daemon.start(tmp_path, storage=backend) as daemon:
        stub = daemon.stub()
        publish(stub, "big", b"first")
        async with daemon.aio_channel() as channel:
            call = rpc.MsgbusServiceStub(channel).Subscribe(pb.SubscribeRequest(topic="big"))
            try:
                first = await asyncio.wait_for(call.read(), 30)
                assert isinstance(first, pb.SubscribeResponse)
                assert first.message.head_id == 1
                payload = b"x" * 1_000_000
                entries = [pb.PublishRequest(topic="big", payload=payload) for _ in range(20)]
                # The batch's answer echoes every message: receive more than gRPC's 4 MiB.
                options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
                with grpc.insecure_channel(daemon.endpoint, options=options) as big:
                    await asyncio.to_thread(
                        rpc.MsgbusServiceStub(big).PublishBatch,
                        pb.PublishBatchRequest(entries=entries),
                        timeout=60,
                    )
                heads = []
                for _ in range(20):
                    response = await asyncio.wait_for(call.read(), 30)
                    assert isinstance(response, pb.SubscribeResponse)
                    assert response.message.payload == payload
                    heads.append(response.message.head_id)
            finally:
                call.cancel()
        assert heads == list(range(2, 22))


async def test_subscription_sees_deletes_and_markers(
    shared_daemon: Daemon, name: Callable[[str], str]
) -> None:
    topic = name("subdel")
    stub = shared_daemon.stub()
    publish(stub, topic, b"a")
    publish(stub, topic, b"b")
    stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=1, to_head_id=1))
    async with shared_daemon.aio_channel() as channel:
        astub = rpc.MsgbusServiceStub(channel)
        received = await _collect(astub, pb.SubscribeRequest(topic=topic), 2)
    assert [(m.head_id, m.deleted, m.payload) for m in received] == [
        (1, True, b""),
        (2, False, b"b"),
    ]


async def test_many_idle_subscribers_and_disconnects(
    shared_daemon: Daemon, name: Callable[[str], str]
) -> None:
    """Subscribers that go away free everything; the others keep working."""
    topics = [name("idle") for _ in range(10)]
    async with shared_daemon.aio_channel() as channel:
        stub = rpc.MsgbusServiceStub(channel)
        calls = [stub.Subscribe(pb.SubscribeRequest(topic=t)) for t in topics for _ in range(10)]
        # Cancel half of them (client goes away).
        for call in calls[::2]:
            call.cancel()
        await stub.Publish(pb.PublishRequest(topic=topics[3], payload=b"x"))
        survivors = calls[1::2]
        first = await asyncio.wait_for(survivors[3 * 5].read(), 60)
        assert isinstance(first, pb.SubscribeResponse)
        assert first.message.topic == topics[3]
        for call in survivors:
            call.cancel()
        for call in calls[::2]:
            assert call.cancelled()
        # The daemon is fine afterwards.
        reply = await stub.Health(pb.HealthRequest(), timeout=10)
        assert reply.status == "SERVING"


async def test_subscribe_error_codes_are_not_internal(shared_daemon: Daemon) -> None:
    async with shared_daemon.aio_channel() as channel:
        stub = rpc.MsgbusServiceStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(topic=""))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
