"""The SDK's exception hierarchy, and the one place where gRPC errors are translated into it.

Callers never see grpc types: every RPC goes through :func:`translate_rpc_error` at the edge of
the clients, so an application handles ``msgbus_sdk.NotFoundError`` and friends only.
"""

from __future__ import annotations

import enum
from typing import Final

import grpc

__all__ = [
    "AbortedError",
    "AlreadyExistsError",
    "CancelledError",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "InternalError",
    "InvalidArgumentError",
    "MsgbusError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "ResourceExhaustedError",
    "StatusCode",
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
    """

    #: Whether a reconnecting subscription retries after this error.
    retryable: bool = False

    def __init__(self, message: str, code: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.value}: {self.message}"


class InvalidArgumentError(MsgbusError):
    """The request was malformed (INVALID_ARGUMENT); the message names the field and the limit."""


class PermissionDeniedError(MsgbusError):
    """A write to a non-local origin or to a reserved ``$msgbus.`` topic (PERMISSION_DENIED)."""


class NotFoundError(MsgbusError):
    """The named thing does not exist (NOT_FOUND)."""


class AlreadyExistsError(MsgbusError):
    """The thing to create already exists (ALREADY_EXISTS)."""


class ConflictError(MsgbusError):
    """The daemon's state forbids the operation (FAILED_PRECONDITION), e.g. a sync conflict."""


class ResourceExhaustedError(MsgbusError):
    """A limit was hit (RESOURCE_EXHAUSTED): message too large, store full, ..."""


class UnavailableError(MsgbusError):
    """The daemon cannot be reached or is shutting down (UNAVAILABLE). Retryable."""

    retryable = True


class DeadlineExceededError(MsgbusError):
    """The call did not finish within its timeout (DEADLINE_EXCEEDED). Retryable."""

    retryable = True


class AbortedError(MsgbusError):
    """The operation was aborted by the daemon (ABORTED). Retryable."""

    retryable = True


class CancelledError(MsgbusError):
    """The call was cancelled (CANCELLED), usually because the daemon went away. Retryable.

    Not to be confused with :class:`asyncio.CancelledError`, which the SDK never swallows.
    """

    retryable = True


class UnauthenticatedError(MsgbusError):
    """The daemon requires credentials that were not presented (UNAUTHENTICATED)."""


class UnimplementedError(MsgbusError):
    """The daemon does not implement the RPC (UNIMPLEMENTED): an older or foreign daemon."""


class InternalError(MsgbusError):
    """The daemon hit a bug (INTERNAL, DATA_LOSS)."""


class UnknownError(MsgbusError):
    """A status the SDK has no better name for (UNKNOWN, OUT_OF_RANGE, ...)."""


class ProtocolError(MsgbusError):
    """The daemon answered in a way the contract does not allow (e.g. an empty response)."""


class ConfigurationError(MsgbusError, ValueError):
    """The client was configured wrongly: a malformed target, unreadable TLS files, ..."""


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


def error_for_status(code: StatusCode, message: str) -> MsgbusError:
    """Build the SDK exception for a status code and message."""
    return _BY_CODE.get(code, UnknownError)(message, code)


def translate_rpc_error(error: grpc.RpcError) -> MsgbusError:
    """Translate a grpc (sync or aio) error into the SDK's hierarchy.

    Both ``grpc.aio.AioRpcError`` and the sync client's rendezvous implement ``grpc.Call``'s
    ``code()`` and ``details()``; anything else is a transport failure without a status.
    """
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    grpc_code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    if not isinstance(grpc_code, grpc.StatusCode):
        return UnknownError(str(error) or "gRPC transport error", StatusCode.UNKNOWN)
    code = StatusCode(grpc_code.name)
    return error_for_status(code, details or grpc_code.value[1])
