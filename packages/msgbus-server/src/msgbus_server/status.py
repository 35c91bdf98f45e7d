"""The mapping from msgbus errors to gRPC statuses: the one place a failure becomes a status.

A status keeps the code and the plain message text of the original daemon, so original Go and
Rust clients see exactly what they always saw. On top of that, an error about a request field
carries a `google.rpc.Status` with a `google.rpc.BadRequest` detail in the standard
`grpc-status-details-bin` trailer: one `FieldViolation` whose `field` is the field's path
(`topic`, `entries[3].topic`) and whose `description` is the message. Every INVALID_ARGUMENT
carries one (with an empty `field` when the error names no single field); other codes carry it
when the error names a field (a reserved topic, for instance). Clients that do not read the
trailer ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from msgbus_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MsgbusError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StorageError,
    StorageFullError,
)

__all__ = ["Failure", "failure"]

# Order matters: subclasses before their bases (StorageFullError before StorageError).
_CODES: tuple[tuple[type[MsgbusError], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageError, grpc.StatusCode.UNAVAILABLE),
)


@dataclass(frozen=True, slots=True)
class Failure:
    """How a call that raised an error is answered (the arguments of `context.abort`)."""

    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def failure(error: BaseException) -> Failure:
    """The status that answers a call that raised `error`; INTERNAL (a bug) if no `MsgbusError`."""
    code = next((c for cls, c in _CODES if isinstance(error, cls)), grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        return Failure(code, f"internal error: {type(error).__name__}: {error}")
    message = str(error)
    assert isinstance(error, MsgbusError)  # every other code comes from a MsgbusError
    if code is not grpc.StatusCode.INVALID_ARGUMENT and error.field is None:
        return Failure(code, message)
    violation = error_details_pb2.BadRequest.FieldViolation(
        field=error.field or "", description=message
    )
    detail = status_pb2.Status(code=code.value[0], message=message)
    detail.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status = rpc_status.to_status(detail)
    return Failure(code, message, tuple(status.trailing_metadata))
