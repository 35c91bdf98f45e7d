"""The in-memory reference store: the model every backend is tested against.

It is deliberately simple (lists and dicts behind one lock) so that it can serve as the
specification of the storage contract. It keeps nothing across restarts.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence
from dataclasses import replace

from msgbus_core.batch import BatchWriter
from msgbus_core.cursors import Cursor, CursorKey, DeleteCursorOp, page_of_cursors
from msgbus_core.errors import MsgbusError
from msgbus_core.fifo_leases import LeasedRow, as_seen
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import (
    FifoMessage,
    FifoQueueSummary,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
    first_held,
    page_of_heads,
)
from msgbus_core.ops import (
    AppendOp,
    Outcome,
    ReplicateOp,
    ReplicateResult,
    WriteOp,
)
from msgbus_core.publish_keys import RememberedPublish
from msgbus_core.replication import (
    Decision,
    apply_tombstones,
    check_replicated,
    decide,
    marker_tombstone,
    replicated_copy,
)
from msgbus_core.store import DiskUsage, MessageSummary, read_size

LogId = tuple[str, NodeId]


class MemoryStore(BatchWriter):
    """A `MsgbusStore` held in process memory."""

    schema_version = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # A log is contiguous from its start (1 until retention trims it), so a list indexed
        # by head - start holds it.
        self._logs: dict[LogId, list[Message]] = {}
        self._starts: dict[LogId, int] = {}
        # Every tombstone as recorded, by its range (the first of duplicates is kept), and the
        # merged set that appends and replicates ask.
        self._tombstones: dict[LogId, dict[tuple[int, int], TombstoneRange]] = {}
        self._erased: dict[LogId, TombstoneSet] = {}
        # A queue's messages by sequence; sequences only grow, so the dict is in queue order.
        self._queues: dict[str, dict[int, FifoMessage]] = {}
        self._lease_ids: dict[tuple[str, int], str] = {}
        self._sequences: dict[str, int] = {}
        self._sync_states: dict[tuple[str, str, str], PeerSyncState] = {}
        self._publish_keys: dict[tuple[LogId, str], RememberedPublish] = {}
        self._cursors: dict[CursorKey, Cursor] = {}

    @classmethod
    def open(cls, path: str) -> MemoryStore:
        """Return a new empty store; `path` is ignored."""
        del path
        return cls()

    # -- writes ---------------------------------------------------------------------------------

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply each op in order; a failing op returns its error and changes nothing."""
        with self._lock:
            outcomes = self._apply_all(ops)
            self._compact_after_commit = False  # memory frees what it drops at once
            return outcomes

    def _find_key(self, topic: str, origin: NodeId, key: str) -> RememberedPublish | None:
        return self._publish_keys.get(((topic, origin), key))

    def _store_key(
        self, topic: str, origin: NodeId, key: str, remembered: RememberedPublish
    ) -> None:
        self._publish_keys[((topic, origin), key)] = remembered

    def _count_keys(self) -> int:
        return len(self._publish_keys)

    def _drop_oldest_keys(self, count: int, before_ms: int | None) -> int:
        candidates = [
            (remembered.created_at_ms, entry[1], entry)
            for entry, remembered in self._publish_keys.items()
            if before_ms is None or remembered.created_at_ms < before_ms
        ]
        candidates.sort(key=lambda candidate: candidate[:2])
        for _, _, entry in candidates[: max(count, 0)]:
            del self._publish_keys[entry]
        return min(len(candidates), max(count, 0))

    def _record_sync_state(self, state: PeerSyncState) -> None:
        self._sync_states[state.sort_key] = state

    def _prune_sync_states(self, keep_peers: frozenset[str]) -> dict[str, int]:
        pruned: dict[str, int] = {}
        for key in [key for key in self._sync_states if key[0] not in keep_peers]:
            del self._sync_states[key]
            pruned[key[0]] = pruned.get(key[0], 0) + 1
        return pruned

    def _cursor_exists(self, key: CursorKey) -> bool:
        return key in self._cursors

    def _cursor_count(self) -> int:
        return len(self._cursors)

    def _store_cursor(self, cursor: Cursor) -> None:
        self._cursors[cursor.key] = cursor

    def _delete_cursors(self, op: DeleteCursorOp) -> int:
        if op.topic is not None:
            return int(self._cursors.pop((op.name, op.topic, op.origin.key), None) is not None)
        doomed = [key for key in self._cursors if key[0] == op.name]
        for key in doomed:
            del self._cursors[key]
        return len(doomed)

    def _append(self, op: AppendOp) -> Message:
        log = self._logs.setdefault((op.topic, op.origin), [])
        head = self._starts.get((op.topic, op.origin), 1) + len(log) - 1
        message = Message(
            op.id, op.topic, op.origin, head + 1, op.payload, dict(op.headers), op.created_at_ms
        )
        erased = self._erased.get((op.topic, op.origin))
        if erased is not None:
            message = apply_tombstones(message, erased)
        log.append(message)
        return message

    def _replicate(self, op: ReplicateOp) -> ReplicateResult:
        changed: list[Message] = []
        unchanged = 0
        for raw in op.messages:
            try:
                incoming = check_replicated(raw)
                log_id = (incoming.topic, incoming.origin)
                start = self._starts.get(log_id, 1)
                incoming = replicated_copy(incoming, self._erased.get(log_id), start)
                log = self._logs.get(log_id, [])
                head = start + len(log) - 1
                existing = (
                    log[incoming.head_id - start] if start <= incoming.head_id <= head else None
                )
                decision = decide(existing, incoming, head, start)
            except MsgbusError as error:
                return ReplicateResult(changed, unchanged, error)
            if decision is Decision.UNCHANGED:
                unchanged += 1
                continue
            log = self._logs.setdefault(log_id, [])
            if decision is Decision.INSERT:
                log.append(incoming)
                if incoming.topic == DELETE_TOPIC and not incoming.deleted:
                    self._record_tombstone(marker_tombstone(incoming))
            else:
                log[incoming.head_id - start] = incoming
            changed.append(incoming)
        return ReplicateResult(changed, unchanged)

    def _record_tombstone(self, tombstone: TombstoneRange) -> int:
        """Record a tombstone (first one kept on duplicates) and erase what it covers."""
        log_id = (tombstone.topic, tombstone.origin)
        span = (tombstone.from_head_id, tombstone.to_head_id)
        self._tombstones.setdefault(log_id, {}).setdefault(span, tombstone)
        self._erased.setdefault(log_id, TombstoneSet()).add(*span)
        log = self._logs.get(log_id, [])
        start = self._starts.get(log_id, 1)
        count = 0
        first = max(tombstone.from_head_id, start) - start
        for index in range(first, min(tombstone.to_head_id - start + 1, len(log))):
            if not log[index].deleted:
                log[index] = log[index].erased()
                count += 1
        return count

    def _head(self, topic: str, origin: NodeId) -> int:
        return self._extent(topic, origin)[1]

    def _merged_tombstones(self, topic: str, origin: NodeId) -> TombstoneSet | None:
        return self._erased.get((topic, origin))

    def _extent(self, topic: str, origin: NodeId) -> tuple[int, int]:
        start = self._starts.get((topic, origin), 1)
        return start, start + len(self._logs.get((topic, origin), ())) - 1

    def _held(self, topic: str, origin: NodeId, first: int, last: int) -> list[Message]:
        start = self._starts.get((topic, origin), 1)
        log = self._logs.get((topic, origin), [])
        return log[max(first - start, 0) : max(last - start + 1, 0)]

    def _cut(self, topic: str, origin: NodeId, before: int) -> tuple[int, int]:
        log_id = (topic, origin)
        log = self._logs.setdefault(log_id, [])
        start = self._starts.get(log_id, 1)
        removed = log[: max(before - start, 0)]
        # The rest of the list starts at `before`; an emptied log's head is before - 1.
        del log[: len(removed)]
        self._starts[log_id] = before
        spans = self._tombstones.get(log_id, {})
        for span in [span for span in spans if span[1] < before]:
            del spans[span]
        if log_id in self._erased:
            self._erased[log_id].drop_below(before)
        return len(removed), sum(read_size(message) for message in removed)

    def _store_marker(self, marker: Message) -> None:
        self._logs.setdefault((marker.topic, marker.origin), []).append(marker)

    def _next_sequence(self, queue: str) -> int:
        sequence = self._sequences[queue] = self._sequences.get(queue, 0) + 1
        return sequence

    def _store_fifo(self, message: FifoMessage) -> None:
        self._queues.setdefault(message.queue, {})[message.sequence] = message

    def _fifo_row(self, queue: str, sequence: int) -> LeasedRow | None:
        message = self._queues.get(queue, {}).get(sequence)
        if message is None:
            return None
        return LeasedRow(message, self._lease_ids.get((queue, sequence), ""))

    def _fifo_expired(self, queue: str, now_ms: int, limit: int) -> list[LeasedRow]:
        expired = [
            LeasedRow(m, self._lease_ids.get((queue, m.sequence), ""))
            for m in self._queues.get(queue, {}).values()
            if 0 < m.leased_until_ms <= now_ms
        ]
        return expired[:limit]

    def _fifo_unleased(self, queue: str, limit: int) -> list[FifoMessage]:
        unleased: list[FifoMessage] = []
        for message in self._queues.get(queue, {}).values():
            if len(unleased) >= limit:
                break
            if not message.leased_until_ms:
                unleased.append(message)
        return unleased

    def _fifo_set_lease(
        self, queue: str, sequence: int, attempts: int, lease_id: str, leased_until_ms: int
    ) -> None:
        held = self._queues[queue]
        held[sequence] = replace(held[sequence], attempts=attempts, leased_until_ms=leased_until_ms)
        if lease_id:
            self._lease_ids[(queue, sequence)] = lease_id
        else:
            self._lease_ids.pop((queue, sequence), None)

    def _fifo_remove(self, queue: str, sequence: int) -> None:
        del self._queues[queue][sequence]
        self._lease_ids.pop((queue, sequence), None)

    # -- reads ----------------------------------------------------------------------------------

    def fetch(
        self,
        topic: str,
        origin: NodeId,
        from_head_id: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Message]:
        """Up to `limit` messages from `from_head_id`, in head order, within `max_bytes`."""
        with self._lock:
            log = self._logs.get((topic, origin), [])
            index = max(max(from_head_id, 1) - self._starts.get((topic, origin), 1), 0)
            page = log[index : index + max(limit, 0)]
        if max_bytes is None:
            return page
        total = 0
        for count, message in enumerate(page):
            total += read_size(message)
            if count and total > max_bytes:
                return page[:count]
        return page

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The log's highest head, or 0."""
        with self._lock:
            return self._extent(topic, origin)[1]

    def log_head(self, topic: str, origin: NodeId) -> TopicHead:
        """The log's head, first head held and bytes; zeros for an unknown log."""
        with self._lock:
            return self._describe(topic, origin)

    def _describe(self, topic: str, origin: NodeId) -> TopicHead:
        start, head = self._extent(topic, origin)
        size = sum(read_size(message) for message in self._logs.get((topic, origin), ()))
        return TopicHead(topic, origin, head, first_held(start, head), size)

    def list_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        """Every log that ever had a message, by topic then origin key; a page of them."""
        with self._lock:
            heads = [self._describe(topic, origin) for topic, origin in self._logs]
        return page_of_heads([h for h in heads if h.head_id], after, limit)

    def summaries(
        self, topic: str, origin: NodeId, from_head_id: int, limit: int
    ) -> list[MessageSummary]:
        """Head, `read_size` and time of up to `limit` messages from `from_head_id`."""
        return [
            MessageSummary(m.head_id, read_size(m), m.created_at_ms)
            for m in self.fetch(topic, origin, from_head_id, limit)
        ]

    def disk_usage(self) -> DiskUsage:
        """Nothing is on disk: the bytes held, as if they were."""
        with self._lock:
            held = sum(read_size(m) for log in self._logs.values() for m in log)
        return DiskUsage(held, 0)

    def list_tombstones(self) -> list[TombstoneRange]:
        """Every tombstone, by topic, origin key, from and to."""
        with self._lock:
            tombstones = [t for ts in self._tombstones.values() for t in ts.values()]
        return sorted(
            tombstones, key=lambda t: (t.topic, t.origin.key, t.from_head_id, t.to_head_id)
        )

    def peek_fifo(self, queue: str, now_ms: int = 0) -> FifoMessage | None:
        """The front of the queue (the lowest no lease holds at `now_ms`), or None."""
        with self._lock:
            for message in self._queues.get(queue, {}).values():
                if message.leased_until_ms <= now_ms:
                    return as_seen(message, now_ms)
            return None

    def list_fifo(
        self, queue: str, after_sequence: int, limit: int, now_ms: int = 0
    ) -> list[FifoMessage]:
        """Up to `limit` messages of `queue` past `after_sequence`, leased or not, in order."""
        with self._lock:
            page = [m for s, m in self._queues.get(queue, {}).items() if s > after_sequence]
        return [as_seen(message, now_ms) for message in page[: max(limit, 0)]]

    def list_fifo_queues(
        self, after: str | None = None, limit: int | None = None
    ) -> list[FifoQueueSummary]:
        """The queues holding messages, by name, past `after`, at most `limit`."""
        with self._lock:
            summaries = [
                FifoQueueSummary(
                    name,
                    len(held),
                    sum(m.attempts for m in held.values()),
                    sum(1 for m in held.values() if m.leased_until_ms),
                )
                for name, held in self._queues.items()
                if held and (after is None or name > after)
            ]
        summaries.sort(key=lambda summary: summary.queue)
        return summaries if limit is None else summaries[: max(limit, 0)]

    def list_sync_states(
        self, after: tuple[str, str, str] | None = None, limit: int | None = None
    ) -> list[PeerSyncState]:
        """Sync states by peer, topic and origin key, past `after`, at most `limit`."""
        with self._lock:
            keys = sorted(self._sync_states)
            start = 0 if after is None else bisect.bisect_right(keys, after)
            end = len(keys) if limit is None else start + max(limit, 0)
            return [self._sync_states[key] for key in keys[start:end]]

    def get_cursor(self, name: str, topic: str, origin: NodeId) -> Cursor | None:
        """The cursor (name, topic, origin), or None."""
        with self._lock:
            return self._cursors.get((name, topic, origin.key))

    def list_cursors(
        self, name: str | None = None, after: CursorKey | None = None, limit: int = 1_000
    ) -> list[Cursor]:
        """Cursors by name, topic and origin key, of `name`, past `after`, at most `limit`."""
        with self._lock:
            cursors = list(self._cursors.values())
        return page_of_cursors(cursors, name, after, limit)

    def check(self) -> None:
        """Memory always answers."""

    def close(self) -> None:
        """Nothing to release."""
