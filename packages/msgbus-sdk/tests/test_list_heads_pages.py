"""ListHeads pages and change cursors as the SDK sees them (issue 15), on real daemons.

The store here holds 12,000 logs with long topic names, more than one page holds (pages are
~3 MiB of heads, whatever the page size): ``list_heads`` and ``iter_heads`` must follow the
pages and give every log once, in order. A cursor from
``list_heads_changed`` lists only what changed, and one from an earlier run of the daemon is
a typed error that says to list again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    ConflictError,
    CursorExpiredError,
    InvalidArgumentError,
    MsgbusClient,
    TopicHead,
    node_key,
)
from msgbus_server.testing import Daemon
from msgbus_testkit.peers import in_process_server

LOGS = 12_000
LONG = [f"long.{n:06d}." + "x" * 240 for n in range(LOGS)]
"""~290 bytes a head: 12,000 heads are ~3.4 MiB, more than one page holds."""


def keys(heads: list[TopicHead]) -> list[tuple[str, str]]:
    return [(head.topic, node_key(head.origin)) for head in heads]


def publish_to(bus: MsgbusClient, topics: list[str], payload: bytes = b"p") -> None:
    for start in range(0, len(topics), 4_000):
        bus.publish_batch([(topic, payload) for topic in topics[start : start + 4_000]])


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon holding the LONG logs; tests that write to it leave the set of logs as it is."""
    with Daemon.start(tmp_path_factory.mktemp("big-store")) as daemon:
        with MsgbusClient.connect(daemon.endpoint) as bus:
            publish_to(bus, LONG)
        yield daemon


@pytest.fixture
async def abus(big_store: Daemon) -> AsyncIterator[AsyncMsgbusClient]:
    async with await AsyncMsgbusClient.connect(big_store.endpoint) as client:
        yield client


def test_the_store_is_more_than_one_page(big_store: Daemon) -> None:
    # The premise of the tests below: the largest page does not list it all.
    page = big_store.stub().ListHeads(pb.ListHeadsRequest(page_size=10_000), timeout=30)
    assert page.next_page_token
    assert len(page.heads) < LOGS


async def test_list_heads_follows_pages_to_every_log_in_order(
    big_store: Daemon, abus: AsyncMsgbusClient
) -> None:
    listed = keys(await abus.list_heads())
    assert [topic for topic, _ in listed if topic.startswith("long.")] == LONG
    assert len(listed) == len(set(listed))
    with MsgbusClient.connect(big_store.endpoint) as bus:
        assert keys(bus.list_heads()) == listed


async def test_iter_heads_yields_the_same_heads_one_page_at_a_time(
    big_store: Daemon, abus: AsyncMsgbusClient
) -> None:
    everything = keys(await abus.list_heads())
    assert keys([head async for head in abus.iter_heads(page_size=1_000)]) == everything
    with MsgbusClient.connect(big_store.endpoint) as bus:
        assert keys(list(bus.iter_heads(page_size=7_777))) == everything
        for size in (0, 10_001):
            with pytest.raises(ConfigurationError, match="page_size must be between 1 and 10000"):
                next(bus.iter_heads(page_size=size))


def test_list_heads_changed_pages_through_more_changes_than_one_response_holds(
    big_store: Daemon,
) -> None:
    with MsgbusClient.connect(big_store.endpoint) as bus:
        start = bus.list_heads_changed(None)
        assert start.full
        assert start.cursor
        assert [t for t, _ in keys(start.heads) if t.startswith("long.")] == LONG
        # Every long log changes, in reverse order: ~3.4 MiB of changed heads, so the
        # changes come in more than one page, and in change order, not by topic.
        publish_to(bus, LONG[::-1])
        cut = big_store.stub().ListHeads(
            pb.ListHeadsRequest(changed_since=start.cursor, page_size=10_000), timeout=30
        )
        assert cut.next_page_token  # the premise: more than one page of changes
        changed = bus.list_heads_changed(start.cursor)
        assert not changed.full
        assert [head.topic for head in changed.heads] == LONG[::-1]
        assert {head.head_id for head in changed.heads} == {2}
        assert changed.cursor
        assert bus.list_heads_changed(changed.cursor).heads == []


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Daemon]:
    with Daemon.start(tmp_path / "msgbusd") as daemon:
        with MsgbusClient.connect(daemon.endpoint) as bus:
            publish_to(bus, [f"quiet.{n}" for n in range(20)])
        yield daemon


async def test_list_heads_changed_lists_exactly_the_logs_published_to_then_nothing(
    small: Daemon,
) -> None:
    async with await AsyncMsgbusClient.connect(small.endpoint) as abus:
        start = await abus.list_heads_changed(None)
        assert start.full
        assert keys(start.heads) == keys(await abus.list_heads())
        assert start.cursor
        idle = await abus.list_heads_changed(start.cursor)
        assert (idle.heads, idle.full) == ([], False)
        for topic in ("quiet.7", "quiet.3", "fresh.log", "quiet.7"):
            await abus.publish(topic, b"new")
        changed = await abus.list_heads_changed(idle.cursor)
        # A log changed twice is listed once, at its latest change and head.
        assert [(h.topic, h.head_id) for h in changed.heads] == [
            ("quiet.3", 2),
            ("fresh.log", 1),
            ("quiet.7", 3),
        ]
        assert not changed.full
        assert (await abus.list_heads_changed(changed.cursor)).heads == []
    with MsgbusClient.connect(small.endpoint) as bus:
        # The same cursor answers the same changes to the blocking client.
        assert bus.list_heads_changed(idle.cursor).heads == changed.heads
        bus.publish("quiet.0", b"again")
        again = bus.list_heads_changed(changed.cursor)
        assert [(h.topic, h.head_id) for h in again.heads] == [("quiet.0", 2)]


def test_a_cursor_of_an_earlier_run_raises_cursor_expired_error(small: Daemon) -> None:
    with MsgbusClient.connect(small.endpoint) as bus:
        cursor = bus.list_heads_changed(None).cursor
        assert cursor
    small.restart()
    with MsgbusClient.connect(small.endpoint) as bus:
        with pytest.raises(CursorExpiredError) as info:
            bus.list_heads_changed(cursor)
        error = info.value
        assert isinstance(error, ConflictError)
        assert error.field == "changed_since"
        assert "list every head again" in error.message
        assert not error.retryable
        # Listing again without a cursor gives one that works.
        fresh = bus.list_heads_changed(None)
        assert fresh.full
        assert len(fresh.heads) == 20
        assert bus.list_heads_changed(fresh.cursor).heads == []


def test_a_cursor_the_daemon_never_gave_is_refused_by_name(small: Daemon) -> None:
    with MsgbusClient.connect(small.endpoint) as bus:
        with pytest.raises(InvalidArgumentError) as info:
            bus.list_heads_changed("@@@")
        assert info.value.field == "changed_since"
        with pytest.raises(ConfigurationError, match="cursor must be a cursor"):
            bus.list_heads_changed("")


class OriginalDaemon(rpc.MsgbusServiceServicer):
    """An original daemon: ListHeads ignores the extension fields and answers every head."""

    def __init__(self) -> None:
        self.requests: list[pb.ListHeadsRequest] = []

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING")

    async def ListHeads(
        self,
        request: pb.ListHeadsRequest,
        context: grpc.aio.ServicerContext[pb.ListHeadsRequest, pb.ListHeadsResponse],
    ) -> pb.ListHeadsResponse:
        self.requests.append(request)
        return pb.ListHeadsResponse(
            heads=[pb.TopicHead(topic=f"t.{n}", head_id=n) for n in range(1, 4)]
        )


async def test_an_original_daemon_lists_every_head_each_time_without_a_cursor() -> None:
    daemon = OriginalDaemon()  # type: ignore[abstract]  # the RPCs it lacks are never called
    async with (
        in_process_server(daemon) as endpoint,
        await AsyncMsgbusClient.connect(endpoint) as abus,
    ):
        assert [h.topic for h in await abus.list_heads()] == ["t.1", "t.2", "t.3"]
        first = await abus.list_heads_changed(None)
        assert (len(first.heads), first.cursor, first.full) == (3, None, True)
        # A cursor the caller kept from another daemon is ignored, not an error.
        ignored = await abus.list_heads_changed("a-cursor")
        assert (len(ignored.heads), ignored.cursor, ignored.full) == (3, None, True)
    assert [r.page_size for r in daemon.requests] == [10_000] * 3
    assert [r.changed_since for r in daemon.requests] == ["", "", "a-cursor"]
    assert all(not r.page_token for r in daemon.requests)
