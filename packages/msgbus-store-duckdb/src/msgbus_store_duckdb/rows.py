"""How domain values become DuckDB column values and back, and how DuckDB errors are reported."""

from __future__ import annotations

import json
from collections.abc import Mapping

import duckdb

from msgbus_core.errors import StorageError, StorageFullError

# Built once: `json.dumps`/`json.loads` with options build a new encoder or decoder per call,
# which costs more than encoding a message's few headers.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().raw_decode


def encode_headers(headers: Mapping[str, str]) -> str | None:
    """Headers as compact JSON (insertion order kept), or NULL when there are none.

    JSON keeps the column readable by other tools (`json_extract(headers, '$.key')`).
    """
    if not headers:
        return None
    return _encode(dict(headers))


def decode_headers(raw: str | None) -> dict[str, str]:
    """The inverse of `encode_headers`."""
    if not raw:
        return {}
    headers: dict[str, str] = _decode(raw)[0]
    return headers


def storage_error(error: duckdb.Error, path: str, doing: str) -> StorageError:
    """Wrap a DuckDB error; a full disk gets its own class so the daemon can say so."""
    text = str(error)
    if "No space left on device" in text or "disk is full" in text.lower():
        return StorageFullError(f"{path}: the disk is full while {doing}: {text}")
    return StorageError(f"{path}: DuckDB failed while {doing}: {text}")
