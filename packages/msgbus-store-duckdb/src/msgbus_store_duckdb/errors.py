"""How DuckDB errors are reported."""

from __future__ import annotations

import duckdb

from msgbus_core.errors import StorageError, StorageFullError


def storage_error(error: duckdb.Error, path: str, doing: str) -> StorageError:
    """Wrap a DuckDB error; a full disk gets its own class so the daemon can say so."""
    text = str(error)
    if "No space left on device" in text or "disk is full" in text.lower():
        return StorageFullError(f"{path}: the disk is full while {doing}: {text}")
    return StorageError(f"{path}: DuckDB failed while {doing}: {text}")
