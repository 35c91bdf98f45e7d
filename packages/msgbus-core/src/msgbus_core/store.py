"""`MsgbusStore`: the storage contract every backend implements.

Methods block; the daemon owns the concurrency. Exactly one thread at a time calls `write` (the
daemon's commit pipeline); reads may come from any thread, concurrently with the writer, and a
backend gives them their own connections. Every backend passes the conformance suite in
`msgbus_core.testing`, so clients cannot tell which one a daemon uses.

Backends are found through the `msgbus.stores` entry point group: the entry point names a class
(or any object) whose `open(path)` returns a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from msgbus_core.cursors import Cursor, CursorKey
from msgbus_core.model import (
    FifoMessage,
    FifoQueueSummary,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
)
from msgbus_core.ops import Outcome, WriteOp
from msgbus_core.rows import encode_headers

ENTRY_POINT_GROUP = "msgbus.stores"
"""The entry point group under which store packages register themselves."""


def read_size(message: Message) -> int:
    """What a message counts against a read's `max_bytes`: its payload and its stored headers.

    Headers count as their stored JSON text, so a SQL backend can sum the columns as they are.
    """
    if not message.headers:
        return len(message.payload)
    return len(message.payload) + len(encode_headers(message.headers) or "")


class MessageSummary(NamedTuple):
    """What retention needs of one stored message: its head, `read_size` and commit time."""

    head_id: int
    size: int
    created_at_ms: int


class DiskUsage(NamedTuple):
    """What a store takes on disk, for the daemon's disk budget."""

    file_bytes: int
    """The database's files (the write-ahead log included)."""
    reusable_bytes: int
    """Free space inside them that stays in the files (a `CompactOp` cannot give it back to
    the file system) and that the database reuses before it grows them. Free space a compaction
    gives back is not counted here: until then it takes the disk like data."""

    @property
    def used_bytes(self) -> int:
        """What the disk budget counts: the files, less the free space that stays in them."""
        return max(self.file_bytes - self.reusable_bytes, 0)


class MsgbusStore(Protocol):
    """A durable home for logs, tombstones, FIFO queues and peer sync state."""

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        ...

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in order, in one durable transaction, and return one outcome per op.

        An op that fails returns its `MsgbusError` and has no effect; the others still apply.
        When the transaction itself fails (for instance the disk is full) nothing is applied and
        a `StorageError` is raised.
        """
        ...

    def fetch(
        self,
        topic: str,
        origin: NodeId,
        from_head_id: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Message]:
        """Up to `limit` messages of a log with head >= `from_head_id`, in head order.

        With `max_bytes`, the page also ends before the message that would bring its total
        `read_size` above `max_bytes`, and the backend never loads more than that plus one
        message. The first message is returned whatever its size, so a read always progresses.
        """
        ...

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The highest head of a log, or 0 when it never had a message."""
        ...

    def log_head(self, topic: str, origin: NodeId) -> TopicHead:
        """One log's extent (head, first head held, bytes); all zero for an unknown log."""
        ...

    def list_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        """Every log that ever had a message, ordered by topic and then origin key.

        A log trimmed empty is listed too (head kept, `first_head_id` 0). `after` (a
        (topic, origin key) pair) starts past that log, whether or not it exists; `limit`
        returns at most that many: a keyset page, stable while logs are added around it.
        """
        ...

    def summaries(
        self, topic: str, origin: NodeId, from_head_id: int, limit: int
    ) -> list[MessageSummary]:
        """Up to `limit` summaries of a log's messages with head >= `from_head_id`, in order."""
        ...

    def disk_usage(self) -> DiskUsage:
        """The store's files and the free space within them, as of the last commit."""
        ...

    def list_tombstones(self) -> list[TombstoneRange]:
        """Every recorded tombstone, ordered by topic, origin key, from and to."""
        ...

    def peek_fifo(self, queue: str, now_ms: int = 0) -> FifoMessage | None:
        """The front of a queue, or None when it is empty.

        The front is the lowest sequence that no lease live at `now_ms` holds (a lease that
        ran out by then shows as none); see `msgbus_core.fifo_leases`.
        """
        ...

    def list_fifo(
        self, queue: str, after_sequence: int, limit: int, now_ms: int = 0
    ) -> list[FifoMessage]:
        """Up to `limit` messages of `queue` with sequence > `after_sequence`, in order.

        Leased messages are listed too, with `leased_until_ms` (0 once it is past `now_ms`).
        """
        ...

    def list_fifo_queues(
        self, after: str | None = None, limit: int | None = None
    ) -> list[FifoQueueSummary]:
        """Every queue that holds a message, with its depth and attempts, ordered by name.

        Names compare by code point. `after` starts past that name, whether or not the queue
        exists; `limit` returns at most that many: a keyset page, as `list_heads` pages.
        """
        ...

    def list_sync_states(
        self, after: tuple[str, str, str] | None = None, limit: int | None = None
    ) -> list[PeerSyncState]:
        """Sync states ordered by `sort_key` (peer, topic, origin key, by code point).

        `after` (a `sort_key`) starts past that key, whether or not a state has it; `limit`
        returns at most that many. Both None: every state. A page, then, is keyset-paged and
        stable while rows are added or deleted around it.
        """
        ...

    def get_cursor(self, name: str, topic: str, origin: NodeId) -> Cursor | None:
        """The durable cursor (name, topic, origin), or None when none was committed."""
        ...

    def list_cursors(
        self, name: str | None = None, after: CursorKey | None = None, limit: int = 1_000
    ) -> list[Cursor]:
        """Cursors ordered by `Cursor.key` (name, topic, origin key, by code point).

        Only those of `name` when it is given; `after` (a key) starts past that key, whether or
        not a cursor has it; at most `limit`: a keyset page, stable while cursors come and go.
        """
        ...

    def check(self) -> None:
        """Raise `StorageError` unless the database answers a trivial query."""
        ...

    def close(self) -> None:
        """Close every connection. The store must not be used afterwards."""
        ...


@runtime_checkable
class SharedStore(MsgbusStore, Protocol):
    """A store that several msgbusd processes write at once (the PostgreSQL store).

    Each process still writes through one commit pipeline of its own; the database assigns
    heads under row locks, so the processes' writes interleave without gaps. What a process
    cannot see by itself, the others' commits and who runs the work that must run once, it
    learns here. Every method blocks; the daemon calls them from threads.
    """

    def changed_logs(self, cursor: object | None, limit: int) -> tuple[list[TopicHead], object]:
        """Logs whose head, start or size any process committed a change to since `cursor`.

        Returns up to `limit` logs and the cursor to ask with next; when `limit` logs came
        back, more may be waiting. `cursor` None returns no logs and a cursor for "now": take it
        before reading what is there (`list_heads`), so that nothing committed in between is
        missed. A log may be listed again although it did not change (never the reverse).
        """
        ...

    def wait_for_commits(self, timeout_s: float) -> bool:
        """Block until another process announces a commit or `timeout_s` passes.

        True when an announcement came. Announcements are only a wake-up: one can be lost
        (a dropped connection) and `changed_logs` stays the source of truth, so callers also
        ask it after a timeout.
        """
        ...

    def try_claim(self, name: str) -> bool:
        """Hold the claim `name` for this process if no other live process holds it.

        True while this process holds it (checked on every call, so a claim lost with the
        database connection is reported). A claim ends with the process that holds it, so
        another process takes it over at its next call.
        """
        ...

    def release_claim(self, name: str) -> None:
        """Give up the claim `name` if this process holds it."""
        ...


class StoreFactory(Protocol):
    """What a `msgbus.stores` entry point refers to."""

    def open(self, path: str) -> MsgbusStore:
        """Open or create the database at `path`; raise `SchemaError` for a foreign file."""
        ...
