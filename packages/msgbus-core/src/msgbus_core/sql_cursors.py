"""The `cursors` table of the SQL stores: its statements and rows, written once for every dialect.

A row is keyed by (name, topic, origin_key); the origin's parts are kept too, so the NodeId reads
back exactly. The key columns compare by UTF-8 bytes (SQLite, DuckDB; PostgreSQL's "C"
collation), which is code-point order: the order of `Cursor.key`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final

from msgbus_core.cursors import Cursor, CursorKey
from msgbus_core.model import NodeId

CURSOR_COLUMNS: Final = (
    "name, topic, origin_key, tenant_id, bl_name, device_id, head_id, updated_at_ms"
)
"""The `cursors` columns, in the order of `cursor_row` and `cursor_from_row`."""

_SELECT: Final = f"SELECT {CURSOR_COLUMNS} FROM cursors"
_KEY: Final = "name = ? AND topic = ? AND origin_key = ?"
_AFTER: Final = "(topic > ? OR (topic = ? AND origin_key > ?))"


class CursorStatements:
    """Every statement on `cursors`, rendered by a dialect's `render` (its placeholders)."""

    def __init__(self, render: Callable[[str], str]) -> None:
        """Build the statements; `statements_for(render)` builds them once per dialect."""
        self.exists: Final[str] = render(f"SELECT 1 FROM cursors WHERE {_KEY}")
        self.count: Final[str] = "SELECT count(*) FROM cursors"
        self.upsert: Final[str] = render(
            f"INSERT INTO cursors ({CURSOR_COLUMNS}) VALUES ({', '.join('?' * 8)}) "
            "ON CONFLICT (name, topic, origin_key) DO UPDATE SET "
            "head_id = excluded.head_id, updated_at_ms = excluded.updated_at_ms"
        )
        self.delete_one: Final[str] = render(f"DELETE FROM cursors WHERE {_KEY}")
        self.delete_name: Final[str] = render("DELETE FROM cursors WHERE name = ?")
        self.get: Final[str] = render(f"{_SELECT} WHERE {_KEY}")
        order = " ORDER BY name, topic, origin_key LIMIT ?"
        self.first: Final[str] = render(f"{_SELECT}{order}")
        self.after: Final[str] = render(
            f"{_SELECT} WHERE name > ? OR (name = ? AND {_AFTER}){order}"
        )
        self.of_name_first: Final[str] = render(f"{_SELECT} WHERE name = ?{order}")
        self.of_name_after: Final[str] = render(f"{_SELECT} WHERE name = ? AND {_AFTER}{order}")

    def page(
        self, name: str | None, after: CursorKey | None, limit: int
    ) -> tuple[str, tuple[object, ...]]:
        """The query and parameters of one `list_cursors` page."""
        if name is None and after is None:
            return self.first, (limit,)
        if name is None:
            assert after is not None
            return self.after, (after[0], after[0], after[1], after[1], after[2], limit)
        if after is None or after[0] < name:
            return self.of_name_first, (name, limit)
        if after[0] > name:
            return self.of_name_first, (name, 0)
        return self.of_name_after, (name, after[1], after[1], after[2], limit)


statements_for: Final = functools.cache(CursorStatements)
"""The cursor statements of a dialect's `render`, built on first use."""


def cursor_row(cursor: Cursor) -> tuple[object, ...]:
    """A cursor as `CURSOR_COLUMNS` values."""
    origin = cursor.origin
    return (
        *cursor.key,
        origin.tenant_id,
        origin.bl_name,
        origin.device_id,
        cursor.head_id,
        cursor.updated_at_ms,
    )


def cursor_from_row(row: Sequence[Any]) -> Cursor:
    """The inverse of `cursor_row`."""
    name, topic, _key, tenant, bl, device, head_id, updated_at_ms = row
    origin = NodeId(str(tenant), str(bl), str(device))
    return Cursor(str(name), str(topic), origin, int(head_id), int(updated_at_ms))


__all__ = ["CURSOR_COLUMNS", "CursorStatements", "cursor_from_row", "cursor_row", "statements_for"]
