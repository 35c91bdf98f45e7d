"""The mapping from msgbus errors to gRPC status codes."""

from __future__ import annotations

import grpc

from msgbus_core.errors import (
    ConflictError,
    InvalidArgumentError,
    MsgbusError,
    NotFoundError,
    PermissionDeniedError,
    StorageError,
    StorageFullError,
)

# Order matters: subclasses before their bases (StorageFullError before StorageError).
_CODES: tuple[tuple[type[MsgbusError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
)


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC code for an error; anything that is not a `MsgbusError` is INTERNAL (a bug)."""
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL
