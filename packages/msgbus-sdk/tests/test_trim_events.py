"""Retention trims as the SDK sees them: a trim is an event, a jump without one is a gap.

A daemon that trimmed a log's prefix answers a subscription expecting head 10 with head 800
and ``first_head_id=800`` on that response. The daemon here is written in the test: it plays
a script of Subscribe responses per stream, so each case (a trimmed start, a trim in the
middle of a stream, a plain gap, a contract violation, a trim found after a reconnect) is
exactly what arrives. Every subscription case runs with both the asyncio and the blocking
client. The same servicer answers ListHeads, GetHead and Fetch for the heads table and the
fetch bounds.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    MessageEnvelope,
    MsgbusClient,
    NodeId,
    ProtocolError,
    ReconnectPolicy,
    Trim,
    TrimmedError,
)
from msgbus_sdk.cli import main
from msgbus_testkit.peers import in_process_server

TOPIC = "telemetry.temp"
HUB = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="hub")
FAST = ReconnectPolicy(initial_delay=0.01, max_delay=0.05)
WAIT = 30.0

BREAK = "break"
"""A script step: end the stream with UNAVAILABLE, as a daemon restart would."""


def envelope(head: int) -> pb.MessageEnvelope:
    return pb.MessageEnvelope(
        id=f"m{head}", topic=TOPIC, origin=HUB, head_id=head, payload=str(head).encode()
    )


def page(*heads: int, first: int = 0) -> pb.SubscribeResponse:
    """One packed Subscribe response; ``first`` is its first_head_id."""
    return pb.SubscribeResponse(messages=[envelope(h) for h in heads], first_head_id=first)


Step = pb.SubscribeResponse | str


class TrimmingDaemon(rpc.MsgbusServiceServicer):
    """Health, Subscribe by script, and a log that retention trimmed to ``first..head``.

    Each Subscribe stream plays the next script of ``streams``, then stays open (live, with
    nothing new); ``requests`` records the from_head_id each stream asked for.
    """

    def __init__(
        self, streams: Sequence[Sequence[Step]] = (), first: int = 0, head: int = 0, size: int = 0
    ) -> None:
        self.streams = list(streams)
        self.requests: list[int] = []
        self.first, self.head, self.size = first, head, size

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING", node=HUB)

    async def Subscribe(
        self,
        request: pb.SubscribeRequest,
        context: grpc.aio.ServicerContext[pb.SubscribeRequest, pb.SubscribeResponse],
    ) -> AsyncIterator[pb.SubscribeResponse]:
        self.requests.append(request.from_head_id)
        script = self.streams.pop(0) if self.streams else []
        for step in script:
            if step == BREAK:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "daemon restarting")
            assert isinstance(step, pb.SubscribeResponse)
            yield step
        await asyncio.Event().wait()  # live, nothing new: until the client cancels

    async def ListHeads(
        self,
        request: pb.ListHeadsRequest,
        context: grpc.aio.ServicerContext[pb.ListHeadsRequest, pb.ListHeadsResponse],
    ) -> pb.ListHeadsResponse:
        return pb.ListHeadsResponse(
            heads=[
                pb.TopicHead(
                    topic=TOPIC,
                    origin=HUB,
                    head_id=self.head,
                    first_head_id=self.first,
                    bytes=self.size,
                ),
                # Every message trimmed: the head stays, nothing is held.
                pb.TopicHead(topic="t.emptied", origin=HUB, head_id=42, first_head_id=0),
            ]
        )

    async def GetHead(
        self,
        request: pb.GetHeadRequest,
        context: grpc.aio.ServicerContext[pb.GetHeadRequest, pb.GetHeadResponse],
    ) -> pb.GetHeadResponse:
        return pb.GetHeadResponse(
            head_id=self.head, found=True, first_head_id=self.first, bytes=self.size
        )

    async def Fetch(
        self,
        request: pb.FetchRequest,
        context: grpc.aio.ServicerContext[pb.FetchRequest, pb.FetchResponse],
    ) -> AsyncIterator[pb.FetchResponse]:
        start = max(request.from_head_id, self.first)
        heads = range(start, min(start + request.limit, self.head + 1))
        trimmed = start if start > max(request.from_head_id, 1) else 0
        yield pb.FetchResponse(messages=[envelope(h) for h in heads], first_head_id=trimmed)


def trimming_daemon(
    streams: Sequence[Sequence[Step]] = (), first: int = 0, head: int = 0, size: int = 0
) -> TrimmingDaemon:
    """A TrimmingDaemon; the RPCs it leaves out answer UNIMPLEMENTED."""
    return TrimmingDaemon(streams, first, head, size)  # type: ignore[abstract]


# -- both clients, one test body -------------------------------------------------------------


class Side(Protocol):
    """The asyncio or the blocking client, driven from the test's event loop."""

    async def connect(self, endpoint: str) -> Any: ...
    async def next(self, subscription: Any) -> MessageEnvelope: ...
    async def close(self, bus: Any) -> None: ...


class AsyncioSide:
    async def connect(self, endpoint: str) -> AsyncMsgbusClient:
        return await AsyncMsgbusClient.connect(endpoint)

    async def next(self, subscription: Any) -> MessageEnvelope:
        message: MessageEnvelope = await asyncio.wait_for(anext(subscription), WAIT)
        return message

    async def close(self, bus: Any) -> None:
        await bus.close()


class BlockingSide:
    """The blocking client in worker threads, so that the loop keeps serving the daemon."""

    async def connect(self, endpoint: str) -> MsgbusClient:
        return await asyncio.to_thread(MsgbusClient.connect, endpoint)

    async def next(self, subscription: Any) -> MessageEnvelope:
        message: MessageEnvelope = await asyncio.wait_for(
            asyncio.to_thread(next, subscription), WAIT
        )
        return message

    async def close(self, bus: Any) -> None:
        await asyncio.to_thread(bus.close)


@pytest.fixture(params=["asyncio", "blocking"])
def side(request: pytest.FixtureRequest) -> Side:
    return AsyncioSide() if request.param == "asyncio" else BlockingSide()


@dataclass
class Run:
    heads: list[int]
    trims: int
    next_head_id: int


async def follow(
    side: Side, daemon: TrimmingDaemon, count: int, from_head_id: int, **options: Any
) -> Run:
    """Subscribe to TOPIC on `daemon` and take `count` messages."""
    async with in_process_server(daemon) as endpoint:
        bus = await side.connect(endpoint)
        try:
            subscription = bus.subscribe(TOPIC, from_head_id=from_head_id, **options)
            heads = [(await side.next(subscription)).head_id for _ in range(count)]
            return Run(heads, subscription.trims, subscription.next_head_id)
        finally:
            await side.close(bus)


def sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "msgbus_sdk"]


# -- continue (the default) ------------------------------------------------------------------


async def test_a_trimmed_start_is_one_logged_event_and_delivery_goes_on_without_a_reopen(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    daemon = trimming_daemon([[page(800, 801, first=800), page(802), page(803)]])
    run = await follow(side, daemon, 4, from_head_id=10)
    assert run.heads == [800, 801, 802, 803]
    assert (run.trims, run.next_head_id) == (1, 804)
    assert daemon.requests == [10]  # not treated as a gap: no reopen
    assert sdk_warnings(caplog) == [
        "subscription topic=telemetry.temp origin=tenant/default/hub: heads 10..799 were "
        "trimmed by retention before delivery; continuing at 800"
    ]


async def test_a_trim_in_the_middle_of_a_stream_is_an_event_too(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    # Retention overtakes a slow subscriber at 3: the daemon goes on at 50. Unpacked responses
    # (an original-style daemon) carry the field the same way.
    single = pb.SubscribeResponse(message=envelope(50), first_head_id=50)
    daemon = trimming_daemon([[page(1, 2), single, page(51, 52)]])
    run = await follow(side, daemon, 5, from_head_id=1)
    assert run.heads == [1, 2, 50, 51, 52]
    assert run.trims == 1
    assert daemon.requests == [1]
    assert len(sdk_warnings(caplog)) == 1
    assert "heads 3..49 were trimmed" in sdk_warnings(caplog)[0]


async def test_a_log_starting_exactly_at_the_expected_head_is_no_trim(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    daemon = trimming_daemon([[page(10, 11, first=10)]])
    run = await follow(side, daemon, 2, from_head_id=10)
    assert (run.heads, run.trims) == ([10, 11], 0)
    assert sdk_warnings(caplog) == []


async def test_a_trim_found_after_a_reconnect_is_the_same_event(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    daemon = trimming_daemon(
        [
            [page(800, 801, first=800), BREAK],
            # While the subscription was away, retention moved the log's start to 900.
            [page(900, 901, first=900)],
        ]
    )
    run = await follow(side, daemon, 4, from_head_id=10, reconnect=FAST)
    assert run.heads == [800, 801, 900, 901]
    assert run.trims == 2
    assert daemon.requests == [10, 802]  # resumed after the first trim, not from 10
    assert [w.split(": ")[1] for w in sdk_warnings(caplog)] == [
        "heads 10..799 were trimmed by retention before delivery; continuing at 800",
        "heads 802..899 were trimmed by retention before delivery; continuing at 900",
    ]


# -- raise, and a callable -------------------------------------------------------------------


async def test_the_raise_policy_raises_trimmed_error_and_leaves_the_cursor_at_the_first_head(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    daemon = trimming_daemon([[page(800, 801, first=800)], [page(800, 801)]])
    async with in_process_server(daemon) as endpoint:
        bus = await side.connect(endpoint)
        try:
            subscription = bus.subscribe(TOPIC, from_head_id=10, on_trim="raise")
            with pytest.raises(TrimmedError) as info:
                await side.next(subscription)
            error = info.value
            assert (error.topic, error.expected_head_id, error.first_head_id) == (TOPIC, 10, 800)
            assert error.origin == NodeId(tenant_id="tenant", bl_name="default", device_id="hub")
            assert not error.retryable
            assert error.code is None
            assert "heads 10..799 were trimmed by retention" in str(error)
            assert (subscription.next_head_id, subscription.trims) == (800, 1)
            # Going on reopens where the log now starts; nothing of the trimmed response
            # was delivered before.
            assert (await side.next(subscription)).head_id == 800
            assert daemon.requests == [10, 800]
        finally:
            await side.close(bus)
    assert sdk_warnings(caplog) == []


async def test_a_callable_policy_receives_the_trim_and_delivery_goes_on(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    seen: list[Trim] = []
    daemon = trimming_daemon([[page(800, 801, first=800)]])
    run = await follow(side, daemon, 2, from_head_id=10, on_trim=seen.append)
    assert run.heads == [800, 801]
    hub = NodeId(tenant_id="tenant", bl_name="default", device_id="hub")
    assert seen == [Trim(topic=TOPIC, origin=hub, expected_head_id=10, first_head_id=800)]
    assert seen[0].skipped == 790
    assert sdk_warnings(caplog) == []  # the application took charge of reporting


async def test_a_callable_that_raises_ends_the_iteration_with_its_error(side: Side) -> None:
    def refuse(trim: Trim) -> None:
        raise RuntimeError(f"refused {trim.skipped}")

    daemon = trimming_daemon([[page(800, first=800)]])
    with pytest.raises(RuntimeError, match="refused 790"):
        await follow(side, daemon, 1, from_head_id=10, on_trim=refuse)
    assert daemon.requests == [10]  # an application's error is not retried


async def test_an_unknown_policy_is_refused_naming_on_trim(side: Side) -> None:
    async with in_process_server(trimming_daemon()) as endpoint:
        bus = await side.connect(endpoint)
        try:
            with pytest.raises(ConfigurationError, match="on_trim must be 'continue', 'raise'"):
                bus.subscribe(TOPIC, on_trim="skip")
        finally:
            await side.close(bus)


# -- gaps and contract violations ------------------------------------------------------------


async def test_a_jump_without_first_head_id_is_still_a_gap_and_reopens(
    side: Side, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="msgbus_sdk")
    daemon = trimming_daemon([[page(1), page(5)], [page(2, 3, 4, 5)]])
    run = await follow(side, daemon, 5, from_head_id=1, reconnect=FAST)
    assert run.heads == [1, 2, 3, 4, 5]
    assert run.trims == 0
    assert daemon.requests == [1, 2]  # reopened at the missing head
    assert sdk_warnings(caplog) == []


@pytest.mark.parametrize(
    ("response", "complaint"),
    [
        (page(801, 802, first=800), "first_head_id 800 on a response with head_id 801 first"),
        (page(5, 6, first=5), "first_head_id 5 below the expected head_id 10"),
        (
            pb.SubscribeResponse(messages=[], first_head_id=800, message=envelope(801)),
            "first_head_id 800 on a response with head_id 801 first",
        ),
    ],
    ids=["not-the-first-head", "below-the-expected-head", "unpacked-not-the-first-head"],
)
async def test_an_inconsistent_first_head_id_is_a_protocol_error(
    side: Side, response: pb.SubscribeResponse, complaint: str
) -> None:
    daemon = trimming_daemon([[response]])
    with pytest.raises(ProtocolError, match=complaint) as info:
        await follow(side, daemon, 1, from_head_id=10, reconnect=FAST)
    assert not isinstance(info.value, TrimmedError)
    assert daemon.requests == [10]  # not retried: the daemon broke the contract


# -- heads and fetch -------------------------------------------------------------------------


async def test_get_head_and_list_heads_carry_the_first_head_and_the_bytes(side: Side) -> None:
    daemon = trimming_daemon(first=1001, head=1500, size=3 * 1024 * 1024)
    async with in_process_server(daemon) as endpoint:
        bus = await side.connect(endpoint)
        try:
            if isinstance(bus, AsyncMsgbusClient):
                head, heads = await bus.get_head(TOPIC), await bus.list_heads()
            else:
                head = await asyncio.to_thread(bus.get_head, TOPIC)
                heads = await asyncio.to_thread(bus.list_heads)
        finally:
            await side.close(bus)
    assert (head.head_id, head.first_head_id, head.bytes) == (1500, 1001, 3 * 1024 * 1024)
    assert [(h.topic, h.first_head_id, h.head_id, h.bytes) for h in heads] == [
        (TOPIC, 1001, 1500, 3 * 1024 * 1024),
        ("t.emptied", 0, 42, 0),
    ]


async def test_iter_fetch_below_a_trimmed_prefix_stops_at_the_end_of_its_range(
    side: Side,
) -> None:
    daemon = trimming_daemon(first=800, head=900)
    async with in_process_server(daemon) as endpoint:
        bus = await side.connect(endpoint)
        try:
            if isinstance(bus, AsyncMsgbusClient):
                below = [m.head_id async for m in bus.iter_fetch(TOPIC, None, 1, 10)]
                across = [m.head_id async for m in bus.iter_fetch(TOPIC, None, 1, 805)]
            else:
                below = await asyncio.to_thread(
                    lambda: [m.head_id for m in bus.iter_fetch(TOPIC, None, 1, 10)]
                )
                across = await asyncio.to_thread(
                    lambda: [m.head_id for m in bus.iter_fetch(TOPIC, None, 1, 805)]
                )
        finally:
            await side.close(bus)
    # Heads 1..10 are all trimmed: the daemon's page of 10 starts at 800, beyond the range.
    assert below == []
    assert across == list(range(800, 806))


# -- the msgbus command ----------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


async def test_heads_shows_first_head_count_and_bytes() -> None:
    daemon = trimming_daemon(first=1001, head=1500, size=1572864)
    async with in_process_server(daemon) as endpoint:
        table = await asyncio.to_thread(run_cli, "--endpoint", endpoint, "heads")
        lines = await asyncio.to_thread(run_cli, "--endpoint", endpoint, "heads", "--json")
    status, out, err = table
    assert (status, err) == (0, "")
    assert [line.split() for line in out.splitlines()] == [
        ["TOPIC", "ORIGIN", "FIRST", "HEAD", "COUNT", "BYTES"],
        [TOPIC, "tenant/default/hub", "1001", "1500", "500", "1.5", "MiB"],
        ["t.emptied", "tenant/default/hub", "-", "42", "0", "0", "B"],
    ]
    status, out, err = lines
    assert (status, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == [
        {
            "topic": TOPIC,
            "origin": "tenant/default/hub",
            "first_head_id": 1001,
            "head_id": 1500,
            "count": 500,
            "bytes": 1572864,
        },
        {
            "topic": "t.emptied",
            "origin": "tenant/default/hub",
            "first_head_id": 0,
            "head_id": 42,
            "count": 0,
            "bytes": 0,
        },
    ]


async def test_subscribe_prints_one_stderr_line_per_trim_and_keeps_stdout_for_messages() -> None:
    daemon = trimming_daemon([[page(800, 801, first=800), page(900, first=900)]])
    async with in_process_server(daemon) as endpoint:
        status, out, err = await asyncio.to_thread(
            run_cli,
            "--endpoint",
            endpoint,
            "subscribe",
            TOPIC,
            "--from",
            "10",
            "--count",
            "3",
            "--json",
        )
    assert status == 0
    assert [json.loads(line)["head_id"] for line in out.splitlines()] == [800, 801, 900]
    assert err.splitlines() == [
        "msgbus: subscription topic=telemetry.temp origin=tenant/default/hub: heads 10..799 "
        "were trimmed by retention before delivery; continuing at 800",
        "msgbus: subscription topic=telemetry.temp origin=tenant/default/hub: heads 802..899 "
        "were trimmed by retention before delivery; continuing at 900",
    ]
