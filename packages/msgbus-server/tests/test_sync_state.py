"""The sync state book: records are emitted only when something but a timestamp changed."""

from __future__ import annotations

from msgbus_core import NodeId, PeerSyncState
from msgbus_server.sync_state import SyncStateBook, state_key

PEER = "127.0.0.1:50052"
ORIGIN = NodeId("t", "b", "remote")


def test_first_observation_is_written_and_an_unchanged_one_is_not() -> None:
    book = SyncStateBook()
    book.success(PEER, "events", ORIGIN, local_head=3, remote_head=3, last_synced_head=3)
    first = book.take_pending()
    assert len(first) == 1
    book.written(first)
    book.success(PEER, "events", ORIGIN, local_head=3, remote_head=3)
    assert book.take_pending() == []  # idle: nothing to write
    book.success(PEER, "events", ORIGIN, local_head=3, remote_head=4)
    [moved] = book.take_pending()
    assert (moved.remote_head, moved.last_synced_head) == (4, 3)  # synced head is kept


def test_seeded_state_suppresses_rewrites_after_a_restart() -> None:
    seed = PeerSyncState(PEER, "events", ORIGIN, 5, 5, 5, 10, 10, 0, "")
    book = SyncStateBook([seed])
    book.success(PEER, "events", ORIGIN, local_head=5, remote_head=5)
    assert book.take_pending() == []


def test_failures_count_up_and_keep_the_last_success() -> None:
    book = SyncStateBook([PeerSyncState(PEER, last_success_at_ms=42)])
    for expected in (1, 2, 3):
        state = book.failure(PEER, "peer down")
        assert state.consecutive_failures == expected
        assert state.last_success_at_ms == 42
        book.written(book.take_pending())
    book.success(PEER)
    [recovered] = book.take_pending()
    assert (recovered.consecutive_failures, recovered.last_error) == (0, "")
    assert recovered.last_success_at_ms > 42


def test_an_uncounted_refusal_is_written_once() -> None:
    book = SyncStateBook()
    for _ in range(3):
        state = book.failure(
            PEER, "refused", "events", ORIGIN, local_head=1, remote_head=9, count=False
        )
        assert state.consecutive_failures == 1
    pending = book.take_pending()
    assert len(pending) == 1
    book.written(pending)
    book.failure(PEER, "refused", "events", ORIGIN, local_head=1, remote_head=9, count=False)
    assert book.take_pending() == []


def test_progress_forces_a_write_of_the_peer_record() -> None:
    book = SyncStateBook([PeerSyncState(PEER)])
    book.success(PEER)
    assert book.take_pending() == []
    book.success(PEER, progressed=True)
    assert len(book.take_pending()) == 1


def test_a_failed_write_is_retried_unless_superseded() -> None:
    book = SyncStateBook()
    book.failure(PEER, "one")
    lost = book.take_pending()
    book.restore(lost)
    assert book.take_pending() == lost
    book.failure(PEER, "one")
    newer = book.failure(PEER, "two")
    book.restore(lost)
    assert book.take_pending() == [newer]
    assert state_key(PEER) == (PEER, "", "")
