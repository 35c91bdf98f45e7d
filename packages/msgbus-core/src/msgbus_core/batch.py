"""`BatchWriter`: how every store applies a `write` batch, op by op, each to its own outcome.

The memory store and the SQL stores share it, so the dispatch, the per-op error rule, the rules
of a local delete (bounds, clamping, the marker it appends) and of a trim (how far it may go,
markers kept while they matter, a peer's trimmed copy taken without a gap) are written once.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Final

from msgbus_core.cursors import CommitCursorOp, CursorWriter, DeleteCursorOp
from msgbus_core.errors import InvalidArgumentError, MsgbusError
from msgbus_core.fifo_leases import (
    MAX_ATTEMPTS,
    AckLeaseOp,
    ExtendLeaseOp,
    FifoLeaseRows,
    LeaseOp,
    RedriveOp,
    RejectLeaseOp,
)
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import (
    FifoMessage,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    first_held,
)
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    CompactOp,
    DeleteRangeOp,
    DeleteResult,
    EnqueueOp,
    Outcome,
    ProbeOp,
    PruneResult,
    PruneSyncStatesOp,
    RecordSyncStateOp,
    RejectOp,
    ReplicateOp,
    ReplicateResult,
    TrimOp,
    TrimResult,
    WriteOp,
    WriteResult,
)
from msgbus_core.publish_keys import PruneKeysOp, PublishKeyWriter
from msgbus_core.replication import (
    check_replicated,
    marker_still_needed,
    marker_tombstone,
    rebase_point,
    replicated_copy,
)
from msgbus_core.validation import validate_stored_int

MARKER_PAGE: Final = 512
"""Markers read at a time while a trim of a marker log looks for one still needed."""


class BatchWriter(CursorWriter, PublishKeyWriter, FifoLeaseRows):
    """The write side of a store: one method per kind of op, called in batch order.

    The cursor ops' rules are `CursorWriter`'s, keyed appends' and key pruning's
    `PublishKeyWriter`'s, FIFO acks', rejects' and leases' `FifoLeaseRows`'; a store
    provides their rows.
    """

    _compact_after_commit: bool = False
    """Set by a `CompactOp`: the store reclaims freed space once the transaction commits."""

    def _apply_all(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in order; an op that fails yields its `MsgbusError` as its outcome."""
        # Invariant: an op raises its MsgbusError before its first change, so a failed op
        # has written nothing and the batch can go on without a savepoint per op.
        outcomes: list[Outcome] = []
        # Every key of the batch in one lookup per log, not one per append.
        self._look_up_keys(op for op in ops if type(op) is AppendOp and op.idempotency_key)
        try:
            for op in ops:
                try:
                    # Appends are the hot path: skip the dispatch.
                    if type(op) is AppendOp and not op.idempotency_key:
                        outcomes.append(self._append(op))
                    else:
                        outcomes.append(self._apply(op))
                except MsgbusError as error:
                    outcomes.append(error)
        finally:
            self._forget_batch_keys()
        return outcomes

    def _apply(self, op: WriteOp) -> WriteResult:
        match op:
            case AppendOp():
                return self._append_once(op) if op.idempotency_key else self._append(op)
            case ReplicateOp():
                return self._replicate_from(op)
            case DeleteRangeOp():
                return self._delete_range(op)
            case TrimOp():
                return self._trim(op)
            case EnqueueOp():
                return self._enqueue(op)
            case AckOp():
                return self._ack(op)
            case RejectOp():
                return self._reject(op)
            case RecordSyncStateOp():
                self._record_sync_state(op.state)
                return None
            case PruneSyncStatesOp():
                return PruneResult(self._prune_sync_states(op.keep_peers))
            case ProbeOp():
                # The transaction around it (its BEGIN and COMMIT) is the probe.
                return None
            case CompactOp():
                self._compact_after_commit = True
                return None
            case CommitCursorOp():
                return self._commit_cursor(op)
            case DeleteCursorOp():
                return self._delete_cursors(op)
            case LeaseOp():
                return self._lease(op)
            case AckLeaseOp():
                return self._ack_lease(op)
            case RejectLeaseOp():
                return self._reject_lease(op)
            case ExtendLeaseOp():
                return self._extend_lease(op)
            case RedriveOp():
                return self._redrive(op)
            case PruneKeysOp():
                return self._prune_keys(op)

    def _delete_range(self, op: DeleteRangeOp) -> DeleteResult:
        """Tombstone the op's range, clamped to [1, head], and append its marker."""
        if op.from_head_id > op.to_head_id:
            raise InvalidArgumentError(
                f"from_head_id must be <= to_head_id, got {op.from_head_id} > {op.to_head_id}"
            )
        self._check_stored_time(op.created_at_ms)
        first, last = max(op.from_head_id, 1), min(op.to_head_id, self._head(op.topic, op.origin))
        if first > last:
            return DeleteResult(0)
        tombstone = TombstoneRange(op.topic, op.origin, first, last, op.created_at_ms)
        count = self._record_tombstone(tombstone)
        head_id, payload = self._head(DELETE_TOPIC, op.origin) + 1, tombstone.to_marker_payload()
        marker = Message(
            op.marker_id, DELETE_TOPIC, op.origin, head_id, payload, {}, op.created_at_ms
        )
        self._store_marker(marker)
        return DeleteResult(count, marker, tombstone)

    def _trim(self, op: TrimOp) -> TrimResult:
        """Remove the op's prefix, as far as the log and its markers allow (see `TrimOp`)."""
        start, head = self._extent(op.topic, op.origin)
        before = min(op.before_head_id, head + 1)
        if op.topic == DELETE_TOPIC and before > start:
            before = self._first_needed_marker(op.origin, start, before)
        if before <= start:
            return TrimResult(0, 0, first_held(start, head))
        removed, freed = self._cut(op.topic, op.origin, before)
        return TrimResult(removed, freed, first_held(before, head))

    def _first_needed_marker(self, origin: NodeId, start: int, before: int) -> int:
        """The head of the first marker in start..before-1 still needed, else `before`."""
        for marker in self._markers(origin, start, before - 1):
            if marker.deleted:
                continue
            # Every stored marker was parsed when it was stored, so this cannot fail.
            tombstone = marker_tombstone(marker)
            if marker_still_needed(tombstone, self._extent(tombstone.topic, tombstone.origin)):
                return marker.head_id
        return before

    def _markers(self, origin: NodeId, first: int, last: int) -> Iterator[Message]:
        """The stored markers of `origin` with heads first..last, read a page at a time."""
        while first <= last:
            page = self._held(DELETE_TOPIC, origin, first, min(last, first + MARKER_PAGE - 1))
            if not page:
                return
            yield from page
            first = page[-1].head_id + 1

    def _replicate_from(self, op: ReplicateOp) -> ReplicateResult:
        """Replicate, first moving the local log's start up to the peer's when it must."""
        if op.first_head_id and op.messages:
            first = op.messages[0]
            _, head = self._extent(first.topic, first.origin)
            rebase = rebase_point(op.first_head_id, first, head)
            if rebase:
                try:
                    # Nothing changes for a batch whose first message would be refused anyway.
                    validate_stored_int("first_head_id", rebase)
                    tombstones = self._merged_tombstones(first.topic, first.origin)
                    replicated_copy(check_replicated(first), tombstones, rebase)
                except MsgbusError as error:
                    return ReplicateResult(error=error)
                self._cut(first.topic, first.origin, rebase)
                return dataclasses.replace(self._replicate(op), rebased_at=rebase)
        return self._replicate(op)

    def _enqueue(self, op: EnqueueOp) -> FifoMessage:
        """Append to the back of a queue, under the next sequence the queue hands out."""
        self._check_stored_time(op.created_at_ms)
        message = FifoMessage(
            op.id, op.queue, op.topic, op.source, op.target, bytes(op.payload), dict(op.headers),
            op.created_at_ms, self._next_sequence(op.queue),
        )  # fmt: skip
        self._store_fifo(message)
        return message

    def _check_stored_time(self, created_at_ms: int) -> None:
        """Refuse a time this store cannot keep, before anything changes (default: any)."""
        del created_at_ms

    @abc.abstractmethod
    def _head(self, topic: str, origin: NodeId) -> int:
        """The writer's current head of a log (0 when it does not exist)."""

    @abc.abstractmethod
    def _merged_tombstones(self, topic: str, origin: NodeId) -> TombstoneSet | None:
        """The writer's merged tombstones of a log; None when the log is not held."""

    @abc.abstractmethod
    def _extent(self, topic: str, origin: NodeId) -> tuple[int, int]:
        """The writer's (start, head) of a log: it holds start..head; (1, 0) when it is new."""

    @abc.abstractmethod
    def _held(self, topic: str, origin: NodeId, first: int, last: int) -> list[Message]:
        """The stored messages of a log with heads first..last, in the writer's transaction."""

    @abc.abstractmethod
    def _cut(self, topic: str, origin: NodeId, before: int) -> tuple[int, int]:
        """Make the log start at `before` (creating it if new); the rows removed and their bytes.

        Every row below `before` and every tombstone wholly below it go, and a head below
        `before - 1` rises to it. The bytes are the removed rows' `read_size` total.
        """

    @abc.abstractmethod
    def _store_marker(self, marker: Message) -> None:
        """Append a local delete marker (its head is the next of its log) to its log."""

    @abc.abstractmethod
    def _append(self, op: AppendOp) -> Message: ...

    @abc.abstractmethod
    def _replicate(self, op: ReplicateOp) -> ReplicateResult: ...

    @abc.abstractmethod
    def _record_tombstone(self, tombstone: TombstoneRange) -> int:
        """Record a tombstone (the first of duplicates is kept) and erase the rows it covers."""

    @abc.abstractmethod
    def _record_sync_state(self, state: PeerSyncState) -> None: ...

    @abc.abstractmethod
    def _prune_sync_states(self, keep_peers: frozenset[str]) -> dict[str, int]:
        """Delete the sync states of every peer not in `keep_peers`; rows deleted per peer."""


__all__ = ["MAX_ATTEMPTS", "BatchWriter"]
