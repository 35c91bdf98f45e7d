"""The SDK's exception hierarchy, and the one place where gRPC errors are translated into it.

Callers never see grpc types: every RPC goes through :func:`translate_rpc_error` at the edge of
the clients, so an application handles ``msgbus_sdk.NotFoundError`` and friends only. The tree::

    MsgbusError                     .message .code .field .index
    ├── TransientError              worth retrying (subscriptions do, with backoff)
    │   ├── UnavailableError        UNAVAILABLE: daemon unreachable, restarting, store failing
    │   ├── DeadlineExceededError   DEADLINE_EXCEEDED: the call's timeout passed
    │   ├── AbortedError            ABORTED
    │   └── CancelledError          CANCELLED: usually the daemon went away mid-call
    ├── InvalidArgumentError        INVALID_ARGUMENT: fix the request (``.field`` says what)
    ├── PermissionDeniedError       PERMISSION_DENIED: the policy refuses it, or a foreign
    │                               origin or reserved topic
    ├── NotFoundError               NOT_FOUND
    ├── AlreadyExistsError          ALREADY_EXISTS
    ├── ConflictError               FAILED_PRECONDITION
    │   └── CursorExpiredError      a ListHeads cursor of an earlier run of the daemon: list
    │                               again without one (``list_heads_changed(None)``)
    ├── ResourceExhaustedError      RESOURCE_EXHAUSTED: the daemon's disk is full, or a message
    │                               is over gRPC's size limit; waiting briefly does not help
    ├── UnauthenticatedError        UNAUTHENTICATED: a token the daemon does not accept
    ├── UnimplementedError          UNIMPLEMENTED: an older or foreign daemon
    ├── InternalError               INTERNAL, DATA_LOSS: a bug in the daemon
    ├── UnknownError                anything else, or a transport failure without a status
    ├── ProtocolError               the daemon broke the contract (raised by the SDK)
    ├── TrimmedError                retention trimmed heads a subscription still expected
    │                               (raised only with ``on_trim="raise"``)
    └── ConfigurationError          a wrong target, TLS files or argument (also a ValueError)
        └── ClientClosedError       the client was used after close()

The daemon names the request field an error is about in the status's ``google.rpc.BadRequest``
detail; :func:`translate_rpc_error` puts it in ``.field`` and the batch entry in ``.index``.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Final

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from ._generated.msgbus.v1 import NodeId

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "CursorExpiredError",
    "DeadlineExceededError",
    "InternalError",
    "InvalidArgumentError",
    "MsgbusError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ResourceExhaustedError",
    "StatusCode",
    "TransientError",
    "TrimmedError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
]


class StatusCode(enum.StrEnum):
    """The gRPC status code an error was raised for (the SDK's own copy of ``grpc.StatusCode``)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    UNAUTHENTICATED = "UNAUTHENTICATED"


class MsgbusError(Exception):
    """Base class of every error the SDK raises.

    Attributes:
        message: the server's status message (or the SDK's own explanation).
        code: the gRPC status code, or ``None`` for errors raised by the SDK itself
            (configuration and protocol errors).
        field: the path of the request field the daemon rejected (``"topic"``,
            ``"entries[3].topic"``), or ``None`` when unknown.
        index: the entry of a ``publish_batch`` that the daemon rejected, or ``None``.
    """

    #: Whether a reconnecting subscription retries after this error.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        code: StatusCode | None = None,
        *,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field
        self.index = index

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.value}: {self.message}"


class TransientError(MsgbusError):
    """A failure that may pass by itself: retrying later, with backoff, is reasonable.

    Reads and subscriptions are always safe to retry, and reconnecting subscriptions do so.
    A write is safe to retry when the daemon itself refused it (it answers UNAVAILABLE when its
    store fails or it is shutting down, and has then stored nothing). When the connection broke
    or the deadline passed while the call was in flight, though, the daemon may have committed
    the write, so retrying a publish may store it twice.
    """

    retryable = True


class InvalidArgumentError(MsgbusError):
    """The request was malformed (INVALID_ARGUMENT); the message names the field and the limit."""


class PermissionDeniedError(MsgbusError):
    """The call is not allowed (PERMISSION_DENIED).

    The daemon's policy refuses the caller this action on this topic or queue (the message
    names the action, the topic and the rule), or the call writes to a non-local origin or to
    a reserved ``$msgbus.`` topic. Not retryable.
    """


class NotFoundError(MsgbusError):
    """The named thing does not exist (NOT_FOUND)."""


class AlreadyExistsError(MsgbusError):
    """The thing to create already exists (ALREADY_EXISTS)."""


class ConflictError(MsgbusError):
    """The daemon's state forbids the operation (FAILED_PRECONDITION), e.g. a sync conflict."""


class CursorExpiredError(ConflictError):
    """The daemon no longer knows the cursor given to ``list_heads_changed``.

    A cursor names one run of the daemon (FAILED_PRECONDITION naming ``changed_since``): once
    the daemon restarted, what changed since it cannot be told. List again without a cursor,
    ``list_heads_changed(None)``, which lists every head and returns a cursor that works. Not
    retryable with the same cursor.
    """


class ResourceExhaustedError(MsgbusError):
    """A limit was hit (RESOURCE_EXHAUSTED): the daemon's disk is full, a message is too large.

    Not transient: msgbusd applies no rate limit, so this is not back-pressure that passes by
    waiting; the disk must be freed or the message made smaller.
    """


class UnavailableError(TransientError):
    """The daemon cannot be reached, is shutting down or its store fails (UNAVAILABLE).

    A client connected to several endpoints has moved on to the next one that answers by the
    time it raises this, so the next call goes there.
    """


class DeadlineExceededError(TransientError):
    """The call did not finish within its timeout (DEADLINE_EXCEEDED)."""


class AbortedError(TransientError):
    """The operation was aborted by the daemon (ABORTED)."""


class CancelledError(TransientError):
    """The call was cancelled (CANCELLED), usually because the daemon went away.

    Not to be confused with :class:`asyncio.CancelledError`, which the SDK never swallows.
    """


class UnauthenticatedError(MsgbusError):
    """The daemon does not accept the caller's credentials (UNAUTHENTICATED).

    Usually the client's ``token`` is unknown to the daemon's token file, wrong, or sent to a
    daemon whose policy names no token file. Not retryable, and a client of several endpoints
    does not fail over on it: every endpoint gets the same token.
    """


class UnimplementedError(MsgbusError):
    """The daemon does not implement the RPC (UNIMPLEMENTED): an older or foreign daemon."""


class InternalError(MsgbusError):
    """The daemon hit a bug (INTERNAL, DATA_LOSS)."""


class UnknownError(MsgbusError):
    """A status the SDK has no better name for (UNKNOWN, OUT_OF_RANGE, ...)."""


class ProtocolError(MsgbusError):
    """The daemon answered in a way the contract does not allow (e.g. an empty response)."""


class TrimmedError(MsgbusError):
    """Retention trimmed heads that a subscription had not delivered yet.

    Raised by a subscription made with ``on_trim="raise"`` when the daemon says its log now
    starts above the head the subscription expected next. Not retryable: the heads are gone.
    The subscription's ``next_head_id`` is then ``first_head_id``, so iterating on, or
    subscribing again from ``first_head_id``, delivers the log from where it now starts.

    Attributes:
        topic: the subscription's topic.
        origin: the origin of the log, as the daemon's envelopes name it.
        expected_head_id: the head the subscription wanted next (the first one trimmed).
        first_head_id: where the log now starts (the lowest head still held).
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str,
        origin: NodeId | None,
        expected_head_id: int,
        first_head_id: int,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.origin = origin
        self.expected_head_id = expected_head_id
        self.first_head_id = first_head_id


class ConfigurationError(MsgbusError, ValueError):
    """The client was configured wrongly: a malformed target, unreadable TLS files, ..."""


class ClientClosedError(ConfigurationError):
    """The client was used after :meth:`~AsyncMsgbusClient.close`, or closed during the call.

    A :class:`ConfigurationError`, hence a :class:`ValueError`, like I/O on a closed file.
    Subscriptions are not affected: closing the client just ends their iteration.
    """

    def __init__(
        self,
        message: str = "the client is closed",
        code: StatusCode | None = None,
        *,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message, code, field=field, index=index)


_BY_CODE: Final[dict[StatusCode, type[MsgbusError]]] = {
    StatusCode.CANCELLED: CancelledError,
    StatusCode.UNKNOWN: UnknownError,
    StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    StatusCode.NOT_FOUND: NotFoundError,
    StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    StatusCode.FAILED_PRECONDITION: ConflictError,
    StatusCode.ABORTED: AbortedError,
    StatusCode.OUT_OF_RANGE: UnknownError,
    StatusCode.UNIMPLEMENTED: UnimplementedError,
    StatusCode.INTERNAL: InternalError,
    StatusCode.UNAVAILABLE: UnavailableError,
    StatusCode.DATA_LOSS: InternalError,
    StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


# A batch entry's prefix in a field path (``entries[3].topic``) and, from daemons that send no
# details, at the start of the message (``entries[3].topic is empty``).
_ENTRY_PREFIX: Final = re.compile(r"entries\[(\d+)\](?:\.|$)")


def error_for_status(
    code: StatusCode, message: str, *, field: str | None = None, index: int | None = None
) -> MsgbusError:
    """Build the SDK exception for a status code and message."""
    return _BY_CODE.get(code, UnknownError)(message, code, field=field, index=index)


def translate_rpc_error(error: grpc.RpcError) -> MsgbusError:
    """Translate a grpc (sync or aio) error into the SDK's hierarchy.

    Both ``grpc.aio.AioRpcError`` and the sync client's rendezvous implement ``grpc.Call``'s
    ``code()``, ``details()`` and ``trailing_metadata()``; anything else is a transport failure
    without a status.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    grpc_code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(grpc_code, grpc.StatusCode):
        return UnknownError(str(error) or "gRPC transport error", StatusCode.UNKNOWN)
    message = details or grpc_code.value[1]
    field = _violated_field(error)
    if field is None:
        index = _entry_index_from_message(message)
    else:
        found = _ENTRY_PREFIX.match(field)
        index = int(found.group(1)) if found else None
    return error_for_status(StatusCode(grpc_code.name), message, field=field or None, index=index)


_CODE_NAMES: Final = {code.value[0]: code.name for code in grpc.StatusCode}


def stream_refusal(error_code: int, message: str) -> MsgbusError:
    """The error of a request a PublishStream refused: the status its unary RPC answers.

    The response carries the code and the message, not the status details, so the batch entry
    comes from the message's ``entries[i].`` prefix and no field is named.
    """
    name = _CODE_NAMES.get(error_code, StatusCode.UNKNOWN.value)
    index = _entry_index_from_message(message)
    return error_for_status(StatusCode(name), message, index=index)


# gRPC's words when a call fails in the channel itself, before any connection carried it: no
# address of the endpoint took a connection (refused, unreachable, TLS handshake failed). A call
# that broke on a connection (a reset, a daemon killed mid-call) says something else ("Stream
# removed", "Socket closed"), and so does a daemon that answers UNAVAILABLE itself.
_NOT_CONNECTED: Final = "failed to connect to all addresses"


def never_sent(error: grpc.RpcError) -> bool:
    """Whether a failed call certainly never reached a daemon.

    True only for UNAVAILABLE raised by the client's channel because it could not connect: no
    byte of the request was sent, so sending it to another endpoint cannot store it twice. Any
    other failure of a write leaves its outcome unknown.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    if not callable(code_fn) or not callable(details_fn):
        return False
    details = details_fn()
    return (
        code_fn() is grpc.StatusCode.UNAVAILABLE
        and isinstance(details, str)
        and details.startswith(_NOT_CONNECTED)
    )


def _violated_field(error: grpc.RpcError) -> str | None:
    """The field of the status's first ``BadRequest`` violation; None without one.

    An empty string means the daemon sent details that name no single field.
    """
    if not callable(getattr(error, "trailing_metadata", None)):
        return None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None  # details that contradict the status itself are not trusted
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                field: str = violation.field
                return field
    return None


def _entry_index_from_message(message: str) -> int | None:
    """The batch entry named by the message of a daemon that sends no details.

    Such a daemon (a build from before the details) prefixes the message with ``entries[i].``;
    the prefix comes before any echoed value, so a topic that reads ``entries[9]`` cannot
    mislead it.
    """
    found = _ENTRY_PREFIX.match(message)
    return int(found.group(1)) if found else None
