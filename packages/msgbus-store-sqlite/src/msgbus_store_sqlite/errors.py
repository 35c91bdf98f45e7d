"""How SQLite errors are reported."""

from __future__ import annotations

import sqlite3

from msgbus_core.errors import StorageError, StorageFullError


def storage_error(error: sqlite3.Error, path: str, doing: str) -> StorageError:
    """Wrap an sqlite3 error; a full disk gets its own class so the daemon can say so."""
    code = getattr(error, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(error):
        return StorageFullError(f"{path}: the disk is full while {doing}: {error}")
    return StorageError(f"{path}: SQLite failed while {doing}: {error}")
