"""msgbus core: the domain model, validation and limits, errors, and the storage contract.

This package uses the standard library only. The daemon and every store package build on it:

- `model`: NodeId, Message, TopicHead, TombstoneRange, FifoMessage, FifoQueueSummary,
  PeerSyncState;
- `validation` and `limits`: the rules every request and every replicated message obeys;
- `errors`: the error hierarchy the daemon maps to gRPC status codes;
- `ops` and `store`: the `MsgbusStore` protocol and the write operations it applies;
- `replication`: the rules for accepting messages from peers, shared by every backend;
- `batch`: how every store applies a write batch, op by op;
- `sql_store` and `sql_schema`: the one implementation of the SQL stores, and the file and
  schema-version checks they share (a backend adds only its dialect and connections);
- `memory`: the in-memory reference store;
- `testing`: the conformance suite every backend runs.
"""

from msgbus_core.errors import (
    ConflictError,
    FailedPreconditionError,
    GapError,
    InvalidArgumentError,
    MsgbusError,
    NotFoundError,
    PermissionDeniedError,
    SchemaError,
    StorageError,
    StorageFullError,
)
from msgbus_core.memory import MemoryStore
from msgbus_core.model import (
    FifoMessage,
    FifoQueueSummary,
    LogKey,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
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
from msgbus_core.store import (
    ENTRY_POINT_GROUP,
    DiskUsage,
    MessageSummary,
    MsgbusStore,
    StoreFactory,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AckOp",
    "AppendOp",
    "CompactOp",
    "ConflictError",
    "FailedPreconditionError",
    "DeleteRangeOp",
    "DeleteResult",
    "DiskUsage",
    "EnqueueOp",
    "FifoMessage",
    "FifoQueueSummary",
    "GapError",
    "InvalidArgumentError",
    "LogKey",
    "MemoryStore",
    "Message",
    "MessageSummary",
    "MsgbusError",
    "MsgbusStore",
    "NodeId",
    "NotFoundError",
    "Outcome",
    "PeerSyncState",
    "PermissionDeniedError",
    "ProbeOp",
    "PruneResult",
    "PruneSyncStatesOp",
    "RecordSyncStateOp",
    "RejectOp",
    "ReplicateOp",
    "ReplicateResult",
    "SchemaError",
    "StorageError",
    "StorageFullError",
    "StoreFactory",
    "TombstoneRange",
    "TopicHead",
    "TrimOp",
    "TrimResult",
    "WriteOp",
    "WriteResult",
]
