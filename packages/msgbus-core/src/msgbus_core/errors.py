"""The msgbus error hierarchy.

Every rejection raised by the core, a store or the daemon is a `MsgbusError`. The daemon maps
each class to one gRPC status code, so the class says what kind of failure it is and the message
says which field or limit caused it.
"""

from __future__ import annotations


class MsgbusError(Exception):
    """Base class of every msgbus error. `str(error)` is the message shown to clients."""


class InvalidArgumentError(MsgbusError):
    """A request field is malformed or outside its limit (gRPC INVALID_ARGUMENT)."""


class GapError(InvalidArgumentError):
    """A replicated message would leave a gap in its log."""


class PermissionDeniedError(MsgbusError):
    """A write to another node's log, or to a reserved `$msgbus.` topic (PERMISSION_DENIED)."""


class NotFoundError(MsgbusError):
    """The requested thing does not exist, such as the front of an empty queue (NOT_FOUND)."""


class ConflictError(MsgbusError):
    """A replicated message differs from the stored one at the same head (FAILED_PRECONDITION)."""


class StorageError(MsgbusError):
    """The store failed. The daemon answers UNAVAILABLE and keeps serving."""


class StorageFullError(StorageError):
    """The disk is full; writes fail until space is freed (RESOURCE_EXHAUSTED)."""


class SchemaError(StorageError):
    """The database file is not a msgbus database, or was written by a newer schema."""
