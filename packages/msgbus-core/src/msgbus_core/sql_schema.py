"""How every SQL store tells its own files from foreign ones, and which schema version they hold.

A file is accepted only when its `meta` table says it is a msgbus database of a schema version
the code knows. Anything else (random bytes, another application's database, a newer msgbus)
raises `SchemaError` naming the file, before a single byte of it is changed. The backends own
their DDL and how they list their tables; the rules here are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from msgbus_core.errors import SchemaError

APPLICATION: Final = "msgbus"
"""The `meta.application` value every msgbus database carries."""

TABLES: Final = frozenset(
    {"meta", "logs", "messages", "tombstones", "fifo_queues", "fifo_messages", "sync_states"}
)
"""The tables of every msgbus schema; a file that lacks one is damaged."""

TABLES_SINCE: Final = {3: frozenset({"cursors", "publish_keys"})}
"""The tables a schema version added, which a file of an older version lacks until `migrate`."""


def check_version(
    path: str,
    tables: Iterable[str],
    read_meta: Callable[[], Mapping[str, str]],
    *,
    kind: str,
    current: int,
) -> int | None:
    """Return the schema version of an existing msgbus database, or None for an empty one.

    `tables` are the table names the file holds and `read_meta` reads its `meta` table as a
    dict; `kind` says what the file is when it has tables but no meta table ("an SQLite
    database") and `current` is the newest version this backend writes. Raises `SchemaError`,
    naming `path`, for anything this code cannot read as msgbus data. Nothing is written.
    """
    present = set(tables)
    if not present:
        return None
    if "meta" not in present:
        raise SchemaError(
            f"{path} is {kind} but not a msgbus database "
            f"(it has the tables {', '.join(sorted(present))} and no msgbus meta table)"
        )
    meta = read_meta()
    if meta.get("application") != APPLICATION:
        raise SchemaError(
            f"{path} is not a msgbus database: its meta table names the application "
            f"{meta.get('application')!r}, expected {APPLICATION!r}"
        )
    raw_version = meta.get("schema_version", "")
    if not raw_version.isdigit():
        raise SchemaError(f"{path} has an unreadable msgbus schema version {raw_version!r}")
    version = int(raw_version)
    if version > current:
        raise SchemaError(
            f"{path} was written by msgbus schema version {version}, newer than the version "
            f"{current} this msgbus understands; upgrade msgbus to open it"
        )
    if version < 1:
        raise SchemaError(f"{path} has an invalid msgbus schema version {version}")
    expected = TABLES.union(*(t for v, t in TABLES_SINCE.items() if v <= version))
    missing = expected - present
    if missing:
        raise SchemaError(
            f"{path} is a damaged msgbus database: the tables {', '.join(sorted(missing))} "
            "are missing"
        )
    return version


def meta_reader(
    con: Any, path: str, unreadable: type[Exception] | tuple[type[Exception], ...]
) -> Callable[[], dict[str, str]]:
    """A `read_meta` for `check_version` that reads the `meta` table through `con`.

    A `meta` table the query cannot read (another application's, of another shape) raises
    `SchemaError` naming `path`; `unreadable` is the driver's error for that.
    """

    def read_meta() -> dict[str, str]:
        try:
            rows = con.execute("SELECT key, value FROM meta").fetchall()
        except unreadable as error:
            raise SchemaError(
                f"{path} is not a msgbus database: its meta table is unreadable ({error})"
            ) from None
        return {str(key): str(value) for key, value in rows}

    return read_meta


def create_tables(
    con: Any, statements: Iterable[str], version: int, *, text: str, placeholder: str = "?"
) -> None:
    """Create the `meta` table and the backend's tables (`statements`) and mark the file ours.

    `con` is a DB-API connection whose driver marks parameters with `placeholder`, `text` the
    database's name for a string column; the caller holds a write transaction.
    """
    con.execute(f"CREATE TABLE meta (key {text} PRIMARY KEY, value {text} NOT NULL)")
    for statement in statements:
        con.execute(statement)
    for row in (("application", APPLICATION), ("schema_version", str(version))):
        con.execute(f"INSERT INTO meta (key, value) VALUES ({placeholder}, {placeholder})", row)


__all__ = ["APPLICATION", "TABLES", "check_version", "create_tables", "meta_reader"]
