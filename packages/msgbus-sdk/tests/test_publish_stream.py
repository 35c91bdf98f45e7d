"""Publishes on a PublishStream, both clients, against real daemons: the default path, many
concurrent publishes on one stream, the same errors as unary calls, a stream reopened after the
daemon restarts, the option to force unary, and the fallback to unary calls (remembered per
endpoint) against a daemon without PublishStream."""

from __future__ import annotations

import asyncio
import itertools
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    InvalidArgumentError,
    MsgbusClient,
    PermissionDeniedError,
    TransientError,
)
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.peers import in_process_server


async def test_publishes_travel_on_the_stream_and_keep_their_order(
    daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        first = await bus.publish(topic, b"first")
        assert bus.publishes_over_stream
        concurrent = await asyncio.gather(
            *(bus.publish(topic, str(i).encode()) for i in range(500))
        )
        batch = await bus.publish_batch([(topic, b"a"), (topic, b"b")])
        last = await bus.publish(topic, b"last")
    heads = [first.head_id, *(e.head_id for e in concurrent), *(e.head_id for e in batch)]
    assert sorted(heads) == list(range(1, 504))
    assert last.head_id == 504
    assert [e.head_id for e in batch] == [502, 503]
    assert all(e.payload == str(i).encode() for i, e in enumerate(concurrent))


def test_the_blocking_client_publishes_on_the_stream_from_many_threads(
    daemon: Daemon, topic: str
) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        assert bus.publish(topic, b"first").head_id == 1
        assert bus.publishes_over_stream

        def publish_some(thread: int) -> list[int]:
            return [bus.publish(topic, f"{thread}-{i}".encode()).head_id for i in range(50)]

        with ThreadPoolExecutor(8) as pool:
            heads = list(itertools.chain.from_iterable(pool.map(publish_some, range(8))))
        assert sorted(heads) == list(range(2, 402))
        assert [e.head_id for e in bus.publish_batch([(topic, b"a"), (topic, b"b")])] == [402, 403]


async def test_refusals_are_the_errors_of_unary_calls_and_the_stream_goes_on(
    daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, coalesce_publishes=False) as bus:
        with pytest.raises(InvalidArgumentError) as empty:
            await bus.publish("", b"x")
        assert (empty.value.field, empty.value.message) == ("topic", "topic is empty")
        with pytest.raises(PermissionDeniedError) as reserved:
            await bus.publish("$msgbus.delete", b"x")
        assert reserved.value.field == "topic"
        with pytest.raises(InvalidArgumentError) as entry:
            await bus.publish_batch([(topic, b"a"), ("", b"b")])
        assert (entry.value.index, entry.value.field) == (1, "entries[1].topic")
        assert (await bus.publish(topic, b"ok")).head_id == 1
        assert bus.publishes_over_stream


def test_the_blocking_client_gets_the_same_errors(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as single:
            bus.publish("a\0b", b"x")
        assert (single.value.field, single.value.message) == ("topic", "topic contains a NUL byte")
        assert bus.publish(topic, b"ok").head_id == 1
        assert bus.publishes_over_stream


async def test_the_stream_is_opened_again_after_the_daemon_restarts(
    fresh_daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(fresh_daemon.endpoint) as bus:
        assert (await bus.publish(topic, b"before")).head_id == 1
        fresh_daemon.restart()
        stored = None
        for _ in range(100):
            try:
                stored = await bus.publish(topic, b"after")
                break
            except TransientError:
                # The broken stream's publish, or one sent while the daemon was down: its
                # outcome is unknown, so the SDK does not send it again.
                await asyncio.sleep(0.05)
        assert stored is not None
        assert stored.payload == b"after"
        assert bus.publishes_over_stream
        heads = [e.head_id for e in await bus.fetch(topic)]
        assert heads[0] == 1
        assert heads[-1] == stored.head_id


def test_the_blocking_client_opens_the_stream_again_after_a_restart(
    fresh_daemon: Daemon, topic: str
) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        assert bus.publish(topic, b"before").head_id == 1
        fresh_daemon.restart()
        # A publish on the broken stream has an unknown outcome and is not sent again: retry.
        stored = wait_until(
            lambda: bus.publish(topic, b"after"),
            retry_on=(TransientError,),
            message="a publish after the restart",
        )
        assert stored.payload == b"after"
        assert bus.publishes_over_stream


async def test_publish_stream_false_sends_unary_calls(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, publish_stream=False) as bus:
        assert not bus.publishes_over_stream
        assert (await bus.publish(topic, b"x")).head_id == 1
        assert [e.head_id for e in await bus.publish_batch([(topic, b"y")])] == [2]


class OriginalDaemon(rpc.MsgbusServiceServicer):
    """Publish and PublishBatch but no PublishStream: what an original daemon answers."""

    def __init__(self) -> None:
        self.heads = itertools.count(1)
        self.calls: list[str] = []

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING")

    def _envelope(self, request: pb.PublishRequest) -> pb.MessageEnvelope:
        head = next(self.heads)
        return pb.MessageEnvelope(id=f"id-{head}", topic=request.topic, head_id=head)

    async def Publish(
        self,
        request: pb.PublishRequest,
        context: grpc.aio.ServicerContext[pb.PublishRequest, pb.PublishResponse],
    ) -> pb.PublishResponse:
        self.calls.append("Publish")
        return pb.PublishResponse(message=self._envelope(request))

    async def PublishBatch(
        self,
        request: pb.PublishBatchRequest,
        context: grpc.aio.ServicerContext[pb.PublishBatchRequest, pb.PublishBatchResponse],
    ) -> pb.PublishBatchResponse:
        self.calls.append("PublishBatch")
        return pb.PublishBatchResponse(messages=[self._envelope(e) for e in request.entries])


async def test_a_daemon_without_publish_stream_gets_unary_calls_remembered() -> None:
    servicer = OriginalDaemon()  # type: ignore[abstract]
    async with in_process_server(servicer) as endpoint:
        async with await AsyncMsgbusClient.connect(endpoint) as bus:
            assert bus.publishes_over_stream  # not known before the first publish
            assert (await bus.publish("t", b"x")).head_id == 1
            assert not bus.publishes_over_stream
            assert (await bus.publish("t", b"y")).head_id == 2
            assert [e.head_id for e in await bus.publish_batch([("t", b"a"), ("t", b"b")])] == [
                3,
                4,
            ]

        def blocking() -> list[int]:
            with MsgbusClient.connect(endpoint) as sync_bus:
                heads = [sync_bus.publish("t", b"z").head_id for _ in range(2)]
                assert not sync_bus.publishes_over_stream
                return heads

        assert await asyncio.to_thread(blocking) == [5, 6]
    assert servicer.calls == ["Publish", "Publish", "PublishBatch", "Publish", "Publish"]
