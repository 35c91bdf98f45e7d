"""The msgbus error hierarchy.

Every rejection raised by the core, a store or the daemon is a `MsgbusError`. The daemon maps
each class to one gRPC status code, so the class says what kind of failure it is and the message
says which field or limit caused it. Errors about a request field also carry that field's path
(and, in a batch, the entry's index) as attributes, which the daemon sends to clients as
structured `google.rpc.BadRequest` details, so no client has to parse the message.
"""

from __future__ import annotations

from typing import Self


class MsgbusError(Exception):
    """Base class of every msgbus error. `str(error)` is the message shown to clients.

    Attributes:
        field: the path of the request field the error is about (`topic`, `origin.device_id`,
            `entries[3].topic`), or None when it is about no single field.
        index: the batch entry the error is about (3 for `entries[3].topic`), or None.
    """

    def __init__(self, *args: object, field: str | None = None, index: int | None = None) -> None:
        super().__init__(*args)
        self.field = field
        self.index = index

    def in_entry(self, index: int) -> Self:
        """The same error raised for entry `index` of a batch.

        Its message and its field gain the prefix `entries[index].`, which is the text
        original clients have always seen.
        """
        prefix = f"entries[{index}]"
        field = prefix if self.field is None else f"{prefix}.{self.field}"
        return type(self)(f"{prefix}.{self}", field=field, index=index)


class InvalidArgumentError(MsgbusError):
    """A request field is malformed or outside its limit (gRPC INVALID_ARGUMENT)."""


class GapError(InvalidArgumentError):
    """A replicated message would leave a gap in its log."""


class PermissionDeniedError(MsgbusError):
    """A write to another node's log, or to a reserved `$msgbus.` topic (PERMISSION_DENIED)."""


class NotFoundError(MsgbusError):
    """The requested thing does not exist, such as the front of an empty queue (NOT_FOUND)."""


class FailedPreconditionError(MsgbusError):
    """The request cannot be served in the daemon's present state (FAILED_PRECONDITION)."""


class ConflictError(FailedPreconditionError):
    """A replicated message differs from the stored one at the same head (FAILED_PRECONDITION)."""


class ResourceExhaustedError(MsgbusError):
    """A bounded resource of the daemon is used up, such as its cursor cap (RESOURCE_EXHAUSTED)."""


class StorageError(MsgbusError):
    """The store failed. The daemon answers UNAVAILABLE and keeps serving."""


class StorageFullError(StorageError):
    """The disk is full; writes fail until space is freed (RESOURCE_EXHAUSTED)."""


class SchemaError(StorageError):
    """The database file is not a msgbus database, or was written by a newer schema."""
