"""msgbus-sdk: the Python SDK for msgbus, a local-first message bus.

Applications talk to the ``msgbusd`` daemon on their device (``127.0.0.1:50051`` by default)
through :class:`AsyncMsgbusClient` (asyncio) or :class:`MsgbusClient` (blocking); both have the
same methods. Messages are the contract's own types (:class:`MessageEnvelope`,
:class:`FifoMessage`, ...), and every failure is a :class:`MsgbusError`.
"""

from ._async_client import AsyncMsgbusClient
from ._async_durable import AsyncDurableSubscription
from ._async_subscription import AsyncSubscription
from ._async_worker import AsyncJob, AsyncWorker
from ._config import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, ReconnectPolicy, parse_target
from ._convert import HeadsChanged, NodeLike, Payload, node_key, parse_node_id
from ._cursors import CommitPolicy
from ._errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    CursorExpiredError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    MsgbusError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    StatusCode,
    TransientError,
    TrimmedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from ._generated.msgbus.v1 import (
    Cursor,
    FifoLease,
    FifoMessage,
    GetHeadResponse,
    HealthResponse,
    MessageEnvelope,
    NodeId,
    PeerSyncState,
    ReadyResponse,
    RejectFifoLeaseResponse,
    TopicHead,
)
from ._idempotency import is_duplicate
from ._requests import BatchEntry, PublishEntry
from ._subscription import Trim, TrimPolicy
from ._sync_client import MsgbusClient
from ._sync_durable import DurableSubscription
from ._sync_subscription import Subscription
from ._sync_worker import Job, Worker
from ._tls import TlsConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_TIMEOUT",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncDurableSubscription",
    "AsyncJob",
    "AsyncMsgbusClient",
    "AsyncSubscription",
    "AsyncWorker",
    "BatchEntry",
    "CancelledError",
    "ClientClosedError",
    "CommitPolicy",
    "ConfigurationError",
    "ConflictError",
    "Cursor",
    "CursorExpiredError",
    "DeadlineExceededError",
    "DurableSubscription",
    "FifoLease",
    "FifoMessage",
    "GetHeadResponse",
    "HeadsChanged",
    "HealthResponse",
    "InternalError",
    "InvalidArgumentError",
    "Job",
    "MessageEnvelope",
    "MsgbusClient",
    "MsgbusError",
    "NodeId",
    "NodeLike",
    "NotFoundError",
    "Payload",
    "PeerSyncState",
    "PermissionDeniedError",
    "ProtocolError",
    "PublishEntry",
    "ReadyResponse",
    "ReconnectPolicy",
    "RejectFifoLeaseResponse",
    "ResourceExhaustedError",
    "StatusCode",
    "Subscription",
    "TlsConfig",
    "TopicHead",
    "TransientError",
    "Trim",
    "TrimPolicy",
    "TrimmedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "Worker",
    "__version__",
    "is_duplicate",
    "node_key",
    "parse_node_id",
    "parse_target",
]
