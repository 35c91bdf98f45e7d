"""The `publish_keys` table of the SQL stores: its statements, written once for every dialect.

A row is keyed by (log, idempotency_key), the primary key that refuses a second row for a key
whatever a writing process believes; an index on created_at_ms serves the dedup worker's
oldest-first pruning. The log column has the dialect's name (`log`, DuckDB's `log_id`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

from msgbus_core.publish_keys import RememberedPublish

KEY_COLUMNS: Final = "idempotency_key, head_id, message_id, created_at_ms"
"""The `publish_keys` columns after the log column, in the order of `key_row`."""


class PublishKeyStatements:
    """Every statement on `publish_keys` for one dialect (its log column and placeholders)."""

    def __init__(self, log_column: str, placeholder: str) -> None:
        """Build the statements; `statements_for` builds them once per dialect."""

        def render(sql: str) -> str:
            return sql if placeholder == "?" else sql.replace("?", placeholder)

        log = log_column
        self.find: Final[str] = render(
            "SELECT head_id, message_id, created_at_ms FROM publish_keys "
            f"WHERE {log} = ? AND idempotency_key = ?"
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


statements_for: Final = functools.cache(PublishKeyStatements)
"""The statements of a (log column, placeholder) pair, built on first use."""


def remembered_from_row(row: Sequence[Any]) -> RememberedPublish:
    """A `find` row as the remembered publish."""
    head_id, message_id, created_at_ms = row
    return RememberedPublish(int(head_id), str(message_id), int(created_at_ms))


__all__ = ["KEY_COLUMNS", "PublishKeyStatements", "remembered_from_row", "statements_for"]
