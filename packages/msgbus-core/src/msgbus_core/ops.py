"""Write operations: what the commit pipeline hands a store, and what each one returns.

A store applies a list of operations in ONE transaction (`MsgbusStore.write`). Each operation
either succeeds with its result or fails alone with a `MsgbusError` and changes nothing; the other
operations of the batch are not affected. Ids and timestamps are chosen by the caller, so every
backend stores exactly the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from msgbus_core.model import FifoMessage, Message, NodeId, PeerSyncState, TombstoneRange


@dataclass(frozen=True, slots=True)
class AppendOp:
    """Append one local message; the store assigns head = current head + 1.

    Result: the stored `Message` (deleted when a tombstone already covers its head).
    """

    topic: str
    origin: NodeId
    payload: bytes
    headers: Mapping[str, str]
    id: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class ReplicateOp:
    """Insert messages received from a peer, all of one log, in ascending head order.

    Result: a `ReplicateResult`. The messages before the first failing one are kept.
    """

    messages: Sequence[Message]


@dataclass(frozen=True, slots=True)
class ReplicateResult:
    """What a `ReplicateOp` did.

    `changed` lists the messages as now stored that were inserted or became deleted;
    `unchanged` counts identical copies; `error` is the failure that stopped the batch, if any.
    """

    changed: list[Message] = field(default_factory=list)
    unchanged: int = 0
    error: Exception | None = None


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
    """Remove the front of a queue if its id is `message_id`. Result: `bool` accepted."""

    queue: str
    message_id: str


@dataclass(frozen=True, slots=True)
class RejectOp:
    """Increment the front's attempts if its id is `message_id`. Result: `bool` accepted."""

    queue: str
    message_id: str


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


WriteOp = (
    AppendOp
    | ReplicateOp
    | DeleteRangeOp
    | EnqueueOp
    | AckOp
    | RejectOp
    | RecordSyncStateOp
    | PruneSyncStatesOp
)
"""Any operation a store's `write` accepts."""

WriteResult = Message | ReplicateResult | DeleteResult | FifoMessage | PruneResult | bool | None
"""Any successful result of a write operation."""

Outcome = WriteResult | Exception
"""One operation's result, or the `MsgbusError` it failed with."""
