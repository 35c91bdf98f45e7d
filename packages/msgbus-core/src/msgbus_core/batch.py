"""`BatchWriter`: how every store applies a `write` batch, op by op, each to its own outcome.

The memory store and the SQL stores share it, so the dispatch, the per-op error rule and the
rules of a local delete (bounds, clamping, the marker it appends) are written once.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Final

from msgbus_core.errors import InvalidArgumentError, MsgbusError
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import FifoMessage, Message, NodeId, PeerSyncState, TombstoneRange
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    DeleteRangeOp,
    DeleteResult,
    EnqueueOp,
    Outcome,
    PruneResult,
    PruneSyncStatesOp,
    RecordSyncStateOp,
    RejectOp,
    ReplicateOp,
    ReplicateResult,
    WriteOp,
    WriteResult,
)

MAX_ATTEMPTS: Final = 2**32 - 1
"""FIFO attempts are a uint32 on the wire and saturate there."""


class BatchWriter(abc.ABC):
    """The write side of a store: one method per kind of op, called in batch order."""

    def _apply_all(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in order; an op that fails yields its `MsgbusError` as its outcome."""
        # Invariant: an op raises its MsgbusError before its first change, so a failed op
        # has written nothing and the batch can go on without a savepoint per op.
        outcomes: list[Outcome] = []
        for op in ops:
            try:
                # Appends are the hot path: skip the dispatch.
                if type(op) is AppendOp:
                    outcomes.append(self._append(op))
                else:
                    outcomes.append(self._apply(op))
            except MsgbusError as error:
                outcomes.append(error)
        return outcomes

    def _apply(self, op: WriteOp) -> WriteResult:
        match op:
            case AppendOp():
                return self._append(op)
            case ReplicateOp():
                return self._replicate(op)
            case DeleteRangeOp():
                return self._delete_range(op)
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
    def _next_sequence(self, queue: str) -> int:
        """Hand out the next sequence of `queue` (1 for a new queue; never reused)."""

    @abc.abstractmethod
    def _store_fifo(self, message: FifoMessage) -> None: ...

    @abc.abstractmethod
    def _ack(self, op: AckOp) -> bool: ...

    @abc.abstractmethod
    def _reject(self, op: RejectOp) -> bool: ...

    @abc.abstractmethod
    def _record_sync_state(self, state: PeerSyncState) -> None: ...

    @abc.abstractmethod
    def _prune_sync_states(self, keep_peers: frozenset[str]) -> dict[str, int]:
        """Delete the sync states of every peer not in `keep_peers`; rows deleted per peer."""


__all__ = ["MAX_ATTEMPTS", "BatchWriter"]
