"""The sync state book: records are emitted only when something but a timestamp changed."""

from __future__ import annotations

from msgbus_core import NodeId, PeerSyncState
from msgbus_server.sync_state import Heads, SyncStateBook, state_key

PEER = "127.0.0.1:50052"
ORIGIN = NodeId("t", "b", "remote")
LOG = ("events", ORIGIN)


def test_first_observation_is_written_and_an_unchanged_one_is_not() -> None:
    book = SyncStateBook(PEER)
    book.success(LOG, Heads(3, 3, 3))
    first = book.take_pending()
    assert len(first) == 1
    book.written(first)
    book.success(LOG, Heads(3, 3))
    assert book.take_pending() == []  # idle: nothing to write
    book.success(LOG, Heads(3, 4))
    [moved] = book.take_pending()
    assert (moved.remote_head, moved.last_synced_head) == (4, 3)  # synced head is kept


def test_seeded_state_suppresses_rewrites_after_a_restart() -> None:
    seed = PeerSyncState(PEER, "events", ORIGIN, 5, 5, 5, 10, 10, 0, "")
    book = SyncStateBook(PEER, [seed])
    book.success(LOG, Heads(5, 5))
    assert book.take_pending() == []


def test_failures_count_up_and_keep_the_last_success() -> None:
    book = SyncStateBook(PEER, [PeerSyncState(PEER, last_success_at_ms=42)])
    for expected in (1, 2, 3):
        state = book.failure("peer down")
        assert state.consecutive_failures == expected
        assert state.last_success_at_ms == 42
        book.written(book.take_pending())
    book.success()
    [recovered] = book.take_pending()
    assert (recovered.consecutive_failures, recovered.last_error) == (0, "")
    assert recovered.last_success_at_ms > 42


def test_an_uncounted_refusal_is_written_once() -> None:
    book = SyncStateBook(PEER)
    for _ in range(3):
        state = book.failure("refused", LOG, Heads(1, 9), count=False)
        assert state.consecutive_failures == 1
    pending = book.take_pending()
    assert len(pending) == 1
    book.written(pending)
    book.failure("refused", LOG, Heads(1, 9), count=False)
    assert book.take_pending() == []


def test_progress_forces_a_write_of_the_peer_record() -> None:
    book = SyncStateBook(PEER, [PeerSyncState(PEER)])
    book.success()
    assert book.take_pending() == []
    book.success(progressed=True)
    assert len(book.take_pending()) == 1


def test_a_failed_write_is_retried_unless_superseded() -> None:
    book = SyncStateBook(PEER)
    book.failure("one")
    lost = book.take_pending()
    book.restore(lost)
    assert book.take_pending() == lost
    book.failure("one")
    newer = book.failure("two")
    book.restore(lost)
    assert book.take_pending() == [newer]
    assert state_key(PEER) == (PEER, "", "")


def test_a_log_simply_in_sync_gets_no_record() -> None:
    book = SyncStateBook(PEER)
    book.success(LOG, Heads(7, 7))  # never pulled from this peer: in sync, nothing to say
    book.success(LOG, Heads(9, 3))
    assert book.take_pending() == []


def test_a_record_is_written_for_a_pull_and_kept_while_the_log_stays_in_sync() -> None:
    book = SyncStateBook(PEER)
    book.success(LOG, Heads(3, 3, 3))
    [pulled] = book.take_pending()
    book.written([pulled])
    # The log moved on without this peer (another peer brought heads 4..6): not rewritten.
    book.success(LOG, Heads(6, 6))
    book.success(LOG, Heads(6, 6, 3))  # a pull that stored nothing new
    assert book.take_pending() == []
    book.success(LOG, Heads(8, 8, 8))
    [newer] = book.take_pending()
    assert (newer.local_head, newer.remote_head, newer.last_synced_head) == (8, 8, 8)


def test_a_failed_log_that_is_in_sync_again_has_its_failure_cleared() -> None:
    book = SyncStateBook(PEER)
    book.failure("refused", LOG, Heads(1, 9), count=False)
    book.written(book.take_pending())
    book.success(LOG, Heads(9, 9))
    [recovered] = book.take_pending()
    assert (recovered.consecutive_failures, recovered.last_error) == (0, "")
    book.written([recovered])
    book.success(LOG, Heads(10, 10))
    assert book.take_pending() == []
