"""Live subscribers take just-committed messages from memory (`recent`), never anything the
store would not answer: the copies are exactly the stored messages, runs of consecutive heads,
forgotten on a delete, a trim or a gap, and bounded per log and across the daemon."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc

from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import Message, NodeId
from msgbus_proto import pb, rpc
from msgbus_server.notify import LogNotifier
from msgbus_server.recent import (
    RECENT_BUDGET_BYTES,
    RECENT_MAX_MESSAGE_BYTES,
    RECENT_PER_LOG,
    RecentBudget,
    RecentMessages,
)
from msgbus_server.testing import wait_until

NODE = NodeId("tenant", "default", "device")


def _message(head: int, size: int = 10, topic: str = "t") -> Message:
    return Message(f"id-{head}", topic, NODE, head, b"p" * size, {}, 1000 + head)


def test_live_deliveries_are_exactly_the_stored_messages(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("live")
    stream = stub.Subscribe(pb.SubscribeRequest(topic=topic, from_head_id=1))
    received: list[pb.MessageEnvelope] = []

    def read() -> None:
        try:
            for response in stream:
                received.append(response.message)
        except grpc.RpcError:
            pass  # cancelled at the end

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stub.Publish(pb.PublishRequest(topic=topic, payload=b"first"))
    wait_until(lambda: len(received) == 1, message="the first message live")
    for i in range(20):
        stub.Publish(
            pb.PublishRequest(topic=topic, payload=f"m{i}".encode(), headers={"i": str(i)})
        )
    entries = [pb.PublishRequest(topic=topic, payload=b"b", headers={"k": "v"})] * 30
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    wait_until(lambda: len(received) == 51, message="every message live")
    stream.cancel()  # type: ignore[no-untyped-call]
    reader.join(10)
    stored = [r.message for r in stub.Fetch(pb.FetchRequest(topic=topic, limit=100))]
    assert received == stored
    assert [m.head_id for m in received] == list(range(1, 52))


def test_kept_messages_are_consecutive_heads_and_a_gap_forgets_them() -> None:
    recent = RecentMessages(RecentBudget())
    for head in range(1, 6):
        recent.note(head, _message(head))
    assert [m.head_id for m in recent.since(3, 10) or []] == [3, 4, 5]
    assert recent.since(6, 10) is None  # not committed yet: the subscriber waits or reads
    assert [m.head_id for m in recent.since(1, 2) or []] == [1, 2]
    recent.note(7, _message(7))  # head 6 never came: only 7 is kept
    assert recent.since(5, 10) is None
    assert [m.head_id for m in recent.since(7, 10) or []] == [7]
    recent.note(8, None)  # a commit without its message (another process, a replication)
    assert recent.since(7, 10) is None
    assert recent.since(8, 10) is None


def test_a_delete_or_a_trim_forgets_every_kept_message() -> None:
    notifier = LogNotifier()
    with notifier.watch("t", NODE) as watch, notifier.watch("u", NODE) as other:
        for head in range(1, 4):
            notifier.notify("t", NODE, head, _message(head))
            notifier.notify("u", NODE, head, _message(head, topic="u"))
        assert watch.recent_since(1, 10) is not None
        notifier.notify(DELETE_TOPIC, NODE, 1)  # a delete range's marker
        assert watch.recent_since(1, 10) is None
        assert other.recent_since(1, 10) is None
        notifier.notify("t", NODE, 4, _message(4))
        assert [m.head_id for m in watch.recent_since(4, 10) or []] == [4]
        notifier.forget_recent()  # what the pipeline does after a retention trim
        assert watch.recent_since(4, 10) is None


def test_kept_messages_are_bounded_per_log_per_message_and_in_all() -> None:
    budget = RecentBudget()
    recent = RecentMessages(budget)
    for head in range(1, 10 * RECENT_PER_LOG):
        recent.note(head, _message(head))
    newest = 10 * RECENT_PER_LOG - 1
    assert recent.since(1, 10_000) is None  # long gone from what is kept
    kept = recent.since(newest - RECENT_PER_LOG + 1, 10_000)
    assert [m.head_id for m in kept or []] == list(range(newest - RECENT_PER_LOG + 1, newest + 1))
    recent.note(10 * RECENT_PER_LOG, _message(10 * RECENT_PER_LOG, RECENT_MAX_MESSAGE_BYTES + 1))
    assert recent.since(10 * RECENT_PER_LOG, 1) is None
    assert budget.held == 0

    # Many watched logs of large messages: far more than the budget is offered.
    notifier = LogNotifier()
    size = RECENT_MAX_MESSAGE_BYTES
    logs = 4 * RECENT_BUDGET_BYTES // (size * RECENT_PER_LOG) + 1
    watches = [notifier.watch(f"log{i}", NODE) for i in range(logs)]
    offered = 0
    for head in range(1, RECENT_PER_LOG + 1):
        for i in range(logs):
            notifier.notify(f"log{i}", NODE, head, _message(head, size, f"log{i}"))
            offered += size
            assert notifier._recent_budget.held <= RECENT_BUDGET_BYTES
    assert offered > 4 * RECENT_BUDGET_BYTES
    for watch in watches:
        watch.close()
    assert notifier._recent_budget.held == 0
