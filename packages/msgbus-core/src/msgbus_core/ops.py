"""Write operations: what the commit pipeline hands a store, and what each one returns.

A store applies a list of operations in ONE transaction (`MsgbusStore.write`). Each operation
either succeeds with its result or fails alone with a `MsgbusError` and changes nothing; the other
operations of the batch are not affected. Ids and timestamps are chosen by the caller, so every
backend stores exactly the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from msgbus_core.cursors import CommitCursorOp, Cursor, DeleteCursorOp
from msgbus_core.fifo_leases import FifoLease, LeaseWriteOp, RejectLeaseResult
from msgbus_core.model import FifoMessage, Message, NodeId, PeerSyncState, TombstoneRange
from msgbus_core.publish_keys import DuplicatePublish, PrunedKeys, PruneKeysOp


@dataclass(frozen=True, slots=True)
class AppendOp:
    """Append one local message; the store assigns head = current head + 1.

    Result: the stored `Message` (deleted when a tombstone already covers its head). With an
    `idempotency_key` already stored for the log (see `msgbus_core.publish_keys`), nothing is
    written and the result is a `DuplicatePublish` of the message stored the first time.
    """

    topic: str
    origin: NodeId
    payload: bytes
    headers: Mapping[str, str]
    id: str
    created_at_ms: int
    idempotency_key: str = ""
    """Empty: none. Otherwise stored with the message, in the same transaction."""


@dataclass(frozen=True, slots=True)
class ReplicateOp:
    """Insert messages received from a peer, all of one log, in ascending head order.

    `first_head_id` is where the peer says its copy of the log starts (its retention trimmed
    the heads below), or 0 when it says nothing, as original peers do. When the batch starts
    exactly there and the local head is below it, the local copy is first trimmed to start
    there too, so the batch continues it without a gap (heads between are gone everywhere this
    peer knows of). Without it, such a batch is a gap, refused as always.

    Result: a `ReplicateResult`. The messages before the first failing one are kept.
    """

    messages: Sequence[Message]
    first_head_id: int = 0


@dataclass(frozen=True, slots=True)
class ReplicateResult:
    """What a `ReplicateOp` did.

    `changed` lists the messages as now stored that were inserted or became deleted;
    `unchanged` counts identical copies; `error` is the failure that stopped the batch, if any.
    """

    changed: list[Message] = field(default_factory=list)
    unchanged: int = 0
    error: Exception | None = None
    rebased_at: int = 0
    """The peer's first head, when the local copy was trimmed to start there (0: it was not)."""


@dataclass(frozen=True, slots=True)
class DeleteRangeOp:
    """Tombstone heads `from_head_id..to_head_id` of a local log and append a marker.

    The range is clamped to [1, current head]. When it is empty after clamping, nothing is
    recorded and no marker is appended.
    Result: a `DeleteResult`.
    """

    topic: str
    origin: NodeId
    from_head_id: int
    to_head_id: int
    marker_id: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What a `DeleteRangeOp` did: rows newly deleted, and the marker and range recorded."""

    deleted_count: int
    marker: Message | None = None
    tombstone: TombstoneRange | None = None


@dataclass(frozen=True, slots=True)
class TrimOp:
    """Remove the oldest messages of one log: every head below `before_head_id`.

    The log's first head becomes `before_head_id`, at most its head + 1 (a log may be trimmed
    empty; its head stays, as heads are never reused). Tombstones wholly below the new first
    head go with the rows. A `$msgbus.delete` marker is kept while any message it covers is
    still held, so trimming a marker log stops at the first such marker.
    Result: a `TrimResult`.
    """

    topic: str
    origin: NodeId
    before_head_id: int


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What a `TrimOp` removed, and where the log starts now."""

    removed: int
    """Rows removed (deleted ones included)."""
    freed_bytes: int
    """Their `read_size` total."""
    first_head_id: int
    """The log's lowest head held afterwards; 0 when it holds nothing."""


@dataclass(frozen=True, slots=True)
class EnqueueOp:
    """Append to the back of a FIFO queue. Result: the stored `FifoMessage`."""

    queue: str
    topic: str
    source: NodeId
    target: NodeId
    payload: bytes
    headers: Mapping[str, str]
    id: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class AckOp:
    """Remove the front of a queue if its id is `message_id`. Result: `bool` accepted.

    The front is the lowest sequence no live lease holds at `now_ms` (`msgbus_core.fifo_leases`
    says how the two models share a queue); leases expired by then are released first.
    """

    queue: str
    message_id: str
    now_ms: int = 0
    max_attempts: int = 0
    """The queue's max_attempts (0: unlimited), for the expired leases this releases."""


@dataclass(frozen=True, slots=True)
class RejectOp:
    """Count a failed attempt on the front if its id is `message_id`. Result: `bool` accepted.

    The front is as for `AckOp`. The attempt counts toward `max_attempts` (0: unlimited): the
    reject that reaches it moves the message to `QUEUE.dead`.
    """

    queue: str
    message_id: str
    now_ms: int = 0
    max_attempts: int = 0


@dataclass(frozen=True, slots=True)
class RecordSyncStateOp:
    """Insert or replace the sync state with the same (peer, topic, origin). Result: None."""

    state: PeerSyncState


@dataclass(frozen=True, slots=True)
class PruneSyncStatesOp:
    """Delete every sync state of the peers not in `keep_peers` (its peer-level and log rows).

    Result: a `PruneResult`.
    """

    keep_peers: frozenset[str]


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What a `PruneSyncStatesOp` deleted: the number of rows of each pruned peer."""

    pruned: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeOp:
    """Change nothing: the write transaction around it is the probe. Result: None.

    The daemon's health monitor writes one while the last transaction failed, so that a quiet
    node learns that the store commits again without waiting for a client's write. It fails
    when the store cannot open or commit a write transaction (SQLite's database locked by
    another writer, a store closed after a failed commit). It needs no disk space, so a full
    disk alone does not fail it (and a DuckDB transaction that changes nothing touches no file).
    """


@dataclass(frozen=True, slots=True)
class CompactOp:
    """Make the space that trims freed reusable, and measured as free, now. Result: None.

    SQLite puts freed pages on its freelist as the transaction commits, but the pages a trim
    rewrote sit in the WAL until a checkpoint; DuckDB frees a block only at a checkpoint, which
    it otherwise runs when its WAL reaches 16 MiB. Until then a trimmed store looks as large
    as before. The store checkpoints after the transaction that holds this op (SQLite also
    truncates its WAL), which takes the writer for as long as writing the WAL into the file
    takes; the retention worker asks for one only when a disk budget needs the measurement.
    """


WriteOp = (
    AppendOp
    | ReplicateOp
    | DeleteRangeOp
    | TrimOp
    | EnqueueOp
    | AckOp
    | RejectOp
    | RecordSyncStateOp
    | PruneSyncStatesOp
    | ProbeOp
    | CompactOp
    | CommitCursorOp
    | DeleteCursorOp
    | PruneKeysOp
    | LeaseWriteOp
)
"""Any operation a store's `write` accepts."""

WriteResult = (
    Message
    | ReplicateResult
    | DeleteResult
    | TrimResult
    | FifoMessage
    | PruneResult
    | Cursor
    | DuplicatePublish
    | PrunedKeys
    | list[FifoLease]
    | RejectLeaseResult
    | int
    | bool
    | None
)
"""Any successful result of a write operation."""

Outcome = WriteResult | Exception
"""One operation's result, or the `MsgbusError` it failed with."""
