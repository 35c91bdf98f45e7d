"""The `publish_keys` table of the SQL stores: its statements, written once for every dialect.

A row is keyed by (log, idempotency_key), the primary key that refuses a second row for a key
whatever a writing process believes; an index on created_at_ms serves the dedup worker's
oldest-first pruning where the database uses one. The log column has the dialect's name (`log`,
DuckDB's `log_id`). A write batch asks for all the keys of a log in one `find_many`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

from msgbus_core.publish_keys import RememberedPublish

KEY_COLUMNS: Final = "idempotency_key, head_id, message_id, created_at_ms"
"""The `publish_keys` columns after the log column, in the order of a buffered key row."""
MAX_KEYS_PER_FIND: Final = 512
"""Keys one `find_many` query asks for at most (SQLite allows 999 parameters before 3.32)."""


class PublishKeyStatements:
    """Every statement on `publish_keys` for one dialect (its log column and placeholders)."""

    def __init__(self, log_column: str, placeholder: str, keys_by_log: bool = True) -> None:
        """Build the statements; `statements_for` builds them once per dialect.

        `keys_by_log=False` makes `find_many` filter on the keys alone (see
        `SqlDialect.keys_by_log`).
        """

        def render(sql: str) -> str:
            return sql if placeholder == "?" else sql.replace("?", placeholder)

        log = log_column
        self._render = render
        self._keys_by_log = keys_by_log
        self._find: Final[str] = (
            f"SELECT {log}, idempotency_key, head_id, message_id, created_at_ms FROM publish_keys "
            f"WHERE {f'{log} = ? AND ' if keys_by_log else ''}idempotency_key IN "
        )
        self.insert: Final[str] = render(
            f"INSERT INTO publish_keys ({log}, {KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
        )
        self.count: Final[str] = "SELECT count(*) FROM publish_keys"
        oldest = (
            f"SELECT {log}, idempotency_key FROM publish_keys{{where}} "
            "ORDER BY created_at_ms, idempotency_key LIMIT ?"
        )
        drop = f"DELETE FROM publish_keys WHERE ({log}, idempotency_key) IN ({oldest})"
        self.drop_oldest: Final[str] = render(drop.format(where=""))
        self.drop_oldest_before: Final[str] = render(drop.format(where=" WHERE created_at_ms < ?"))

    def find_many(self, log_id: int, keys: Sequence[str]) -> tuple[str, list[object]]:
        """The query for the stored rows of `keys` (at most `MAX_KEYS_PER_FIND`) in a log.

        Its rows are (log id, key, then what `remembered_from_row` reads); without
        `keys_by_log` they include other logs' rows of the same keys, for the caller to skip.
        The list of placeholders is padded (with the last key again) to a power of two, so a
        database that caches its statements by text sees only a few.
        """
        size = 1  # a lone publish's key is one parameter: padding costs DuckDB 0.3 ms
        while size < len(keys):
            size *= 2
        parameters: list[object] = [log_id] if self._keys_by_log else []
        parameters += [*keys, *[keys[-1]] * (size - len(keys))]
        return self._find_of(size), parameters

    @functools.cache  # noqa: B019 - one instance per dialect (statements_for), never freed
    def _find_of(self, size: int) -> str:
        return self._render(f"{self._find}({', '.join('?' * size)})")


statements_for: Final = functools.cache(PublishKeyStatements)
"""The statements of a (log column, placeholder, keys_by_log) dialect, built on first use."""


def remembered_from_row(row: Sequence[Any]) -> RememberedPublish:
    """A `find_many` row, after its log id and key, as the remembered publish."""
    head_id, message_id, created_at_ms = row
    return RememberedPublish(int(head_id), str(message_id), int(created_at_ms))


__all__ = ["KEY_COLUMNS", "PublishKeyStatements", "remembered_from_row", "statements_for"]
