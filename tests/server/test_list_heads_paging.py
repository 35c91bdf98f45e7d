"""ListHeads pages, and lists only the logs changed since a cursor (issue 15), on a real daemon.

An original client sends no field and still gets every head in one response, now bounded to
what it can receive; a paging client walks keyset pages; a peer that keeps the listing's cursor
asks for the changes only, so an idle sync pass costs one call that lists nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.calls import rpc_error

MIB = 1024 * 1024


def publish_logs(stub: rpc.MsgbusServiceStub, topics: list[str]) -> None:
    for start in range(0, len(topics), 5_000):
        entries = [pb.PublishRequest(topic=t, payload=b"p") for t in topics[start : start + 5_000]]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


def list_all(stub: rpc.MsgbusServiceStub, page_size: int) -> tuple[list[pb.TopicHead], str]:
    """Every head through pages of `page_size`, and the listing's cursor."""
    heads: list[pb.TopicHead] = []
    request = pb.ListHeadsRequest(page_size=page_size)
    cursors = set()
    while True:
        response = stub.ListHeads(request, timeout=30)
        assert len(response.heads) <= page_size
        heads += response.heads
        cursors.add(response.cursor)
        if not response.next_page_token:
            break
        request = pb.ListHeadsRequest(page_size=page_size, page_token=response.next_page_token)
    # Every page of one listing carries the cursor of the listing's start.
    assert len(cursors) == 1
    return heads, cursors.pop()


def keys(heads: list[pb.TopicHead]) -> list[tuple[str, str]]:
    return [
        (h.topic, f"{h.origin.tenant_id}/{h.origin.bl_name}/{h.origin.device_id}") for h in heads
    ]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with Daemon.start(tmp_path) as running:
        yield running


def test_pages_walk_every_head_once_in_order(daemon: Daemon) -> None:
    stub = daemon.stub()
    topics = [f"paged.{n:05d}" for n in range(2_500)]
    publish_logs(stub, topics)
    heads, cursor = list_all(stub, 1_000)
    mine = [k for k in keys(heads) if k[0].startswith("paged.")]
    assert [topic for topic, _ in mine] == topics
    assert keys(heads) == sorted(keys(heads))
    assert cursor
    # An original client's request (no field) still gets every head in one response.
    original = stub.ListHeads(pb.ListHeadsRequest(), timeout=30)
    assert keys(list(original.heads)) == keys(heads)
    assert not original.next_page_token


def test_an_original_request_gets_every_head_and_pages_stay_small(daemon: Daemon) -> None:
    stub = daemon.stub()
    # Long topic names: 12,000 heads of ~290 bytes are ~3.4 MiB, more than one page holds.
    long = [f"long.{n:06d}." + "x" * 240 for n in range(12_000)]
    publish_logs(stub, long)
    # An original request (no field) keeps today's answer: every head, in one response.
    original = stub.ListHeads(pb.ListHeadsRequest(), timeout=30)
    assert original.ByteSize() > 3 * MIB
    assert [h.topic for h in original.heads if h.topic.startswith("long.")] == long
    assert not original.next_page_token
    # A page is bounded in bytes whatever its page_size, and the pages add up to the same.
    page = stub.ListHeads(pb.ListHeadsRequest(page_size=10_000), timeout=30)
    assert page.ByteSize() <= 3 * MIB + 64 * 1024
    assert page.next_page_token
    seen = keys(list(page.heads))
    while page.next_page_token:
        page = stub.ListHeads(
            pb.ListHeadsRequest(page_token=page.next_page_token, page_size=10_000), timeout=30
        )
        seen += keys(list(page.heads))
    assert seen == keys(list(original.heads))


def test_changed_since_lists_only_what_changed_in_change_order(daemon: Daemon) -> None:
    stub = daemon.stub()
    publish_logs(stub, [f"quiet.{n}" for n in range(50)])
    _, cursor = list_all(stub, 10_000)
    idle = stub.ListHeads(pb.ListHeadsRequest(changed_since=cursor), timeout=10)
    assert list(idle.heads) == []
    assert not idle.next_page_token
    for topic in ("quiet.7", "quiet.3", "fresh.log", "quiet.7"):
        stub.Publish(pb.PublishRequest(topic=topic, payload=b"new"), timeout=10)
    changed = stub.ListHeads(pb.ListHeadsRequest(changed_since=cursor), timeout=10)
    # A log changed twice is listed once, at its latest change, with its latest head.
    assert [(h.topic, h.head_id) for h in changed.heads] == [
        ("quiet.3", 2),
        ("fresh.log", 1),
        ("quiet.7", 3),
    ]
    assert all(h.first_head_id == 1 for h in changed.heads)
    again = stub.ListHeads(pb.ListHeadsRequest(changed_since=changed.cursor), timeout=10)
    assert list(again.heads) == []
    # Pages of changes: a cut page says where to go on.
    first = stub.ListHeads(pb.ListHeadsRequest(changed_since=cursor, page_size=2), timeout=10)
    assert [h.topic for h in first.heads] == ["quiet.3", "fresh.log"]
    assert first.next_page_token
    second = stub.ListHeads(
        pb.ListHeadsRequest(changed_since=first.next_page_token, page_size=2), timeout=10
    )
    assert [h.topic for h in second.heads] == ["quiet.7"]
    assert not second.next_page_token


def test_bad_tokens_and_cursors_are_refused_by_name(daemon: Daemon) -> None:
    stub = daemon.stub()
    for request, field in [
        (pb.ListHeadsRequest(page_token="not a token"), "page_token"),
        (pb.ListHeadsRequest(changed_since="@@@"), "changed_since"),
    ]:
        error = rpc_error(functools.partial(stub.ListHeads, request, timeout=10))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in (error.details() or "")


def test_a_cursor_from_an_earlier_run_asks_for_a_full_listing(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        stub.Publish(pb.PublishRequest(topic="t", payload=b"x"), timeout=10)
        _, cursor = list_all(stub, 100)
        daemon.restart()
        stub = daemon.stub()
        error = rpc_error(
            lambda: stub.ListHeads(pb.ListHeadsRequest(changed_since=cursor), timeout=10)
        )
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "changed_since" in (error.details() or "")
        assert "list every head again" in (error.details() or "")
        # The new run's listing gives a cursor that works.
        heads, fresh = list_all(stub, 100)
        assert [h.topic for h in heads] == ["t"]
        assert (
            list(stub.ListHeads(pb.ListHeadsRequest(changed_since=fresh), timeout=10).heads) == []
        )
