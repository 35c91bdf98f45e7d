"""The SDK's error tree: field details from the daemon, the fallback, closed clients, transients.

Real daemons through the server's harness, and for what msgbusd never does (a batch rejection
without details, a call that hangs) a small grpc.aio server of the test's own.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import msgbus_sdk
from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidArgumentError,
    MessageEnvelope,
    MsgbusClient,
    MsgbusError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TransientError,
    UnavailableError,
)
from msgbus_server.testing import Daemon, free_port
from msgbus_testkit.peers import in_process_server

# -- details from msgbusd --------------------------------------------------------------------


async def test_a_batch_error_names_its_entry_and_field(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as info:
            await bus.publish_batch([(topic, b"a"), (topic, b"b"), ("", b"c")])
    error = info.value
    assert (error.index, error.field) == (2, "entries[2].topic")
    assert error.message == "entries[2].topic is empty"
    assert str(error) == "INVALID_ARGUMENT: entries[2].topic is empty"


def test_the_blocking_client_reads_the_same_details(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        with pytest.raises(PermissionDeniedError) as info:
            bus.publish_batch([(topic, b"a"), ("$msgbus.delete", b"b")])
        assert (info.value.index, info.value.field) == (1, "entries[1].topic")
        with pytest.raises(InvalidArgumentError) as single:
            bus.publish("a\0b", b"x")
        assert (single.value.index, single.value.field) == (None, "topic")
        assert single.value.message == "topic contains a NUL byte"


async def test_an_error_without_a_field_has_none(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as info:
            await bus.delete_range(topic, 3, 2)
    assert (info.value.field, info.value.index) == (None, None)
    assert info.value.message == "from_head_id must be <= to_head_id, got 3 > 2"


# -- a daemon of the test's own --------------------------------------------------------------


class HandMadeDaemon(rpc.MsgbusServiceServicer):
    """Health, Publish, PublishBatch and GetHead, answered the way a test needs.

    PublishBatch rejects an empty topic like msgbusd did before it sent details: the entry is
    named in the message only. GetHead never answers until `release` is set.
    """

    def __init__(self) -> None:
        self.heads: dict[str, int] = {}
        self.ids = itertools.count(1)
        self.batches: list[int] = []
        self.release = asyncio.Event()
        self.waiting = 0
        self.details: status_pb2.Status | None = None
        """When set, every PublishBatch is rejected with this rich status."""

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        node = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
        return pb.HealthResponse(status="SERVING", node=node)

    def _envelope(self, request: pb.PublishRequest) -> pb.MessageEnvelope:
        head = self.heads[request.topic] = self.heads.get(request.topic, 0) + 1
        return pb.MessageEnvelope(
            id=f"id-{next(self.ids)}", topic=request.topic, head_id=head, payload=request.payload
        )

    async def Publish(
        self,
        request: pb.PublishRequest,
        context: grpc.aio.ServicerContext[pb.PublishRequest, pb.PublishResponse],
    ) -> pb.PublishResponse:
        if not request.topic:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "topic is empty")
        return pb.PublishResponse(message=self._envelope(request))

    async def PublishBatch(
        self,
        request: pb.PublishBatchRequest,
        context: grpc.aio.ServicerContext[pb.PublishBatchRequest, pb.PublishBatchResponse],
    ) -> pb.PublishBatchResponse:
        self.batches.append(len(request.entries))
        if self.details is not None:
            status = rpc_status.to_status(self.details)
            await context.abort(status.code, status.details, status.trailing_metadata)
        for index, entry in enumerate(request.entries):
            if not entry.topic:
                message = f"entries[{index}].topic is empty"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return pb.PublishBatchResponse(messages=[self._envelope(e) for e in request.entries])

    async def GetHead(
        self,
        request: pb.GetHeadRequest,
        context: grpc.aio.ServicerContext[pb.GetHeadRequest, pb.GetHeadResponse],
    ) -> pb.GetHeadResponse:
        self.waiting += 1
        await self.release.wait()
        return pb.GetHeadResponse(head_id=0, found=False)


@pytest.fixture
async def hand_made() -> AsyncIterator[tuple[str, HandMadeDaemon]]:
    servicer = HandMadeDaemon()  # type: ignore[abstract]
    async with in_process_server(servicer) as endpoint:
        try:
            yield endpoint, servicer
        finally:
            servicer.release.set()


async def test_without_details_the_entry_comes_from_the_message(
    hand_made: tuple[str, HandMadeDaemon],
) -> None:
    endpoint, _ = hand_made
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as info:
            await bus.publish_batch([("t", b"a"), ("t", b"b"), ("", b"c")])
    assert (info.value.index, info.value.field) == (2, None)
    assert info.value.message == "entries[2].topic is empty"


async def test_coalescing_still_isolates_a_bad_entry_on_a_daemon_without_details(
    hand_made: tuple[str, HandMadeDaemon],
) -> None:
    endpoint, servicer = hand_made
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        results = await asyncio.gather(
            *(bus.publish("t" if i != 3 else "", str(i)) for i in range(6)),
            return_exceptions=True,
        )
    error = results[3]
    assert isinstance(error, InvalidArgumentError)
    assert error.message == "topic is empty"
    stored = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, MessageEnvelope) for r in stored)
    # The first went out alone (the client was idle); the batch of the other five was rejected
    # for the bad entry, and the four others went again as a batch.
    assert servicer.batches == [5, 4]
    assert servicer.heads["t"] == 5


async def test_details_win_over_the_message(hand_made: tuple[str, HandMadeDaemon]) -> None:
    endpoint, servicer = hand_made
    message = "entries[0].topic is empty"  # the text says 0, the details say 1
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="entries[1].payload", description=message
    )
    servicer.details = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message
    )
    servicer.details.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as info:
            await bus.publish_batch([("t", b"a"), ("t", b"b")])
    assert (info.value.index, info.value.field, info.value.message) == (
        1,
        "entries[1].payload",
        message,
    )


async def _until(condition: Callable[[], bool], what: str, within: float = 30) -> None:
    """Poll `condition` on the event loop, which also serves the hand-made daemon."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.01)


# -- closed clients --------------------------------------------------------------------------


async def test_a_closed_async_client_raises_client_closed_error(daemon: Daemon) -> None:
    bus = await AsyncMsgbusClient.connect(daemon.endpoint)
    await bus.close()
    for call in (
        bus.health,
        lambda: bus.publish("t", b"x"),
        lambda: bus.publish_batch([("t", b"x")]),
        lambda: bus.fetch("t"),
        lambda: bus.peek_fifo("q"),
    ):
        with pytest.raises(ClientClosedError, match="the client is closed") as info:
            await call()
        # Still a ConfigurationError (and a ValueError), as before it had its own class.
        assert isinstance(info.value, ConfigurationError)
        assert isinstance(info.value, ValueError)
        assert info.value.code is None
    with pytest.raises(ClientClosedError):
        await anext(bus.iter_fetch("t"))
    with pytest.raises(ClientClosedError):
        bus.subscribe("t")


def test_a_closed_blocking_client_raises_client_closed_error(daemon: Daemon) -> None:
    bus = MsgbusClient.connect(daemon.endpoint)
    bus.close()
    with pytest.raises(ClientClosedError):
        bus.publish("t", b"x")
    with pytest.raises(ClientClosedError):
        bus.list_heads()
    with pytest.raises(ClientClosedError):
        next(bus.iter_fetch("t"))
    with pytest.raises(ClientClosedError):
        bus.subscribe("t")


async def test_a_call_running_when_the_client_closes_raises_client_closed_error(
    hand_made: tuple[str, HandMadeDaemon],
) -> None:
    endpoint, servicer = hand_made
    bus = await AsyncMsgbusClient.connect(endpoint, timeout=None)
    running = asyncio.ensure_future(bus.get_head("t"))
    await _until(lambda: servicer.waiting > 0, "GetHead arrives")
    await bus.close()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(running, 30)


async def test_a_blocking_call_running_when_the_client_closes_raises_client_closed_error(
    hand_made: tuple[str, HandMadeDaemon],
) -> None:
    endpoint, servicer = hand_made
    bus = await asyncio.to_thread(MsgbusClient.connect, endpoint, timeout=None)
    running = asyncio.ensure_future(asyncio.to_thread(bus.get_head, "t"))
    await _until(lambda: servicer.waiting > 0, "GetHead arrives")
    bus.close()
    with pytest.raises(ClientClosedError):
        await asyncio.wait_for(running, 30)


# -- the transient base ----------------------------------------------------------------------


def test_the_transient_errors_are_the_retryable_ones() -> None:
    exported = [
        cls
        for cls in vars(msgbus_sdk).values()
        if isinstance(cls, type) and issubclass(cls, MsgbusError)
    ]
    for cls in exported:
        assert cls.retryable == issubclass(cls, TransientError), cls.__name__
    transient = {cls.__name__ for cls in exported if issubclass(cls, TransientError)}
    assert transient == {
        "TransientError",
        "UnavailableError",
        "DeadlineExceededError",
        "AbortedError",
        "CancelledError",
    }
    # A full disk or an oversized message does not pass by waiting.
    assert not issubclass(ResourceExhaustedError, TransientError)
    assert not issubclass(ClientClosedError, TransientError)


def test_an_unreachable_daemon_is_transient() -> None:
    with pytest.raises(TransientError) as info:
        MsgbusClient.connect(f"127.0.0.1:{free_port()}", timeout=5)
    assert isinstance(info.value, UnavailableError | DeadlineExceededError)
