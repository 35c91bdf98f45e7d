"""The lease statements of the SQL stores on `fifo_messages`, written once for every dialect.

A leased row has `lease_id` and `leased_until_ms` set; a row no lease holds has "" and 0. The
index on (queue, leased_until_ms, sequence) serves the two questions every lease asks: which
leases ran out (0 < leased_until_ms <= now) and which rows are free (leased_until_ms = 0), both
in sequence order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Final

from msgbus_core.rows import FIFO_COLUMNS

_SELECT: Final = f"SELECT {FIFO_COLUMNS}, lease_id FROM fifo_messages"


class FifoLeaseStatements:
    """Every lease statement on `fifo_messages`, rendered by a dialect's `render`."""

    def __init__(self, render: Callable[[str], str]) -> None:
        """Build the statements; `statements_for(render)` builds them once per dialect."""
        self.row: Final[str] = render(f"{_SELECT} WHERE queue = ? AND sequence = ?")
        self.expired: Final[str] = render(
            f"{_SELECT} WHERE queue = ? AND leased_until_ms > 0 AND leased_until_ms <= ? "
            "ORDER BY sequence LIMIT ?"
        )
        self.unleased: Final[str] = render(
            f"SELECT {FIFO_COLUMNS} FROM fifo_messages WHERE queue = ? AND leased_until_ms = 0 "
            "ORDER BY sequence LIMIT ?"
        )
        self.set_lease: Final[str] = render(
            "UPDATE fifo_messages SET attempts = ?, lease_id = ?, leased_until_ms = ? "
            "WHERE queue = ? AND sequence = ?"
        )
        self.remove: Final[str] = render(
            "DELETE FROM fifo_messages WHERE queue = ? AND sequence = ?"
        )
        self.front: Final[str] = render(
            f"SELECT {FIFO_COLUMNS} FROM fifo_messages WHERE queue = ? AND leased_until_ms <= ? "
            "ORDER BY sequence LIMIT 1"
        )
        self.page: Final[str] = render(
            f"SELECT {FIFO_COLUMNS} FROM fifo_messages WHERE queue = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?"
        )


statements_for: Final = functools.cache(FifoLeaseStatements)
"""The lease statements of a dialect's `render`, built on first use."""

LEASE_COLUMNS_DDL: Final = (
    "lease_id {text} NOT NULL DEFAULT ''",
    "leased_until_ms BIGINT NOT NULL DEFAULT 0",
    "dead_reason {text} NOT NULL DEFAULT ''",
)
"""The lease columns of `fifo_messages` (`{text}`: the dialect's text type), in DDL order."""

LEASE_INDEX_DDL: Final = (
    "CREATE INDEX fifo_messages_by_lease ON fifo_messages (queue, leased_until_ms, sequence)"
)
"""The index every lease query uses (see the module docstring)."""


def add_lease_columns(text: str, *, indexed: bool = True) -> tuple[str, ...]:
    """The migration statements that add the lease columns (and the index) to `fifo_messages`.

    `text` is the dialect's text type. DuckDB goes without the index: it refuses to alter a
    table that has one, and its scans of a queue are fast enough without.
    """
    columns = tuple(
        f"ALTER TABLE fifo_messages ADD COLUMN {column.format(text=text)}"
        for column in LEASE_COLUMNS_DDL
    )
    return (*columns, LEASE_INDEX_DDL) if indexed else columns


__all__ = [
    "LEASE_COLUMNS_DDL",
    "LEASE_INDEX_DDL",
    "FifoLeaseStatements",
    "add_lease_columns",
    "statements_for",
]
