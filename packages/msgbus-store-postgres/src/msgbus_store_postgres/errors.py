"""How PostgreSQL errors are reported, and which of them a write may safely retry."""

from __future__ import annotations

from typing import Final

import psycopg
from psycopg import errors

from msgbus_core.errors import StorageError, StorageFullError

RETRYABLE_STATES: Final = frozenset(
    {
        errors.DeadlockDetected.sqlstate,
        errors.SerializationFailure.sqlstate,
        errors.LockNotAvailable.sqlstate,
    }
)
"""SQLSTATEs after which PostgreSQL has rolled the whole transaction back by itself, so
sending it again cannot apply anything twice (two msgbusd processes locked two logs in opposite
orders, say). A lost connection is not one: its COMMIT may have landed."""

_FULL_STATES: Final = frozenset({errors.DiskFull.sqlstate, errors.OutOfMemory.sqlstate})


class TransactionRolledBack(StorageError):
    """A write transaction PostgreSQL aborted for a conflict with another process; retry it."""


def storage_error(error: psycopg.Error, where: str, doing: str) -> StorageError:
    """Wrap a psycopg error met at `where` (the database, password hidden) while `doing`.

    A full disk gets its own class, so the daemon says so; a deadlock or serialization failure
    is a `TransactionRolledBack`, which the store retries.
    """
    state = getattr(error, "sqlstate", None)
    # The server's primary message only: psycopg appends context lines to str(error).
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if state in RETRYABLE_STATES:
        return TransactionRolledBack(f"{where}: PostgreSQL rolled back while {doing}: {detail}")
    if state in _FULL_STATES:
        return StorageFullError(f"{where}: the disk is full while {doing}: {detail}")
    return StorageError(f"{where}: PostgreSQL failed while {doing}: {detail}")
