"""Exactly-once publish: idempotency keys remembered with the messages they published.

A publish may carry an `idempotency_key`. The store keeps one row per (log, key) naming the
message that key published, written in the SAME transaction as the message, so a client that
retries after a crash between the commit and its answer finds the key and gets the first
message back (`DuplicatePublish`) instead of storing a second copy. The key is looked up after
the writer holds the log (on a shared PostgreSQL database, after its row lock), and the table's
primary key on (log, key) refuses a second row whatever a process believes.

A write batch looks its keys up before its first op, once per log for all the keys its appends
carry (`_find_keys`: one query, not one per append), and remembers what each append of the
batch stored, so a key repeated within the batch answers its first envelope too. A store may
buffer the key rows of a transaction and insert them in one statement before it commits, as
the SQL stores do with message rows.

Keys are forgotten by `PruneKeysOp`, which the daemon's dedup worker writes in bounded batches:
those older than the dedup window, and the oldest beyond the key-count cap. A key is therefore
remembered for at least the window unless the cap forced it out first.

When the message a key published is gone by the time it repeats, the repeat is still a
duplicate (nothing is stored twice): a deleted message answers as stored, deleted with its
payload erased; a message retention trimmed answers its id, head_id and created_at_ms, with no
payload or headers, marked deleted (`remembered_message`).
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import Message, NodeId

if TYPE_CHECKING:
    from msgbus_core.ops import AppendOp

MAX_KEY_BYTES: Final = 128
"""The longest idempotency key, in UTF-8 bytes."""
DEFAULT_DEDUP_WINDOW_MS: Final = 24 * 3600 * 1000
"""How long a key is remembered unless `--dedup-window` says otherwise."""
DEFAULT_MAX_KEYS: Final = 1_000_000
"""How many keys a store keeps unless `--dedup-max-keys` says otherwise."""
PRUNE_BATCH: Final = 10_000
"""Keys one `PruneKeysOp` of the dedup worker removes at most (one short transaction)."""

# Unicode category Cc, as names refuse it (msgbus_core.validation).
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_idempotency_key(value: str, field: str = "idempotency_key") -> str:
    """Check a key: at most `MAX_KEY_BYTES` UTF-8 bytes and no control characters.

    The empty key means none. Raises `InvalidArgumentError` naming `field` and the limit.
    """
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{field} is not valid UTF-8", field=field) from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{field} is {size} bytes; the limit is {MAX_KEY_BYTES} UTF-8 bytes", field=field
        )
    bad = _CONTROL_CHARACTER.search(value)
    if bad is not None:
        raise InvalidArgumentError(
            f"{field} contains the control character U+{ord(bad.group()):04X}", field=field
        )
    return value


@dataclass(frozen=True, slots=True)
class DuplicatePublish:
    """The result of an `AppendOp` whose idempotency key was already stored: nothing written.

    `message` is the message stored the first time, as it is now (`remembered_message`).
    """

    message: Message


@dataclass(frozen=True, slots=True)
class PruneKeysOp:
    """Forget idempotency keys: the oldest beyond `max_keys`, then those older than a time.

    Keys go oldest first (by `created_at_ms`, then key), at most `limit` of them in all: first
    as many as the store holds beyond `max_keys`, then those with `created_at_ms` below
    `expired_before_ms`. Result: a `PrunedKeys`.
    """

    expired_before_ms: int
    max_keys: int
    limit: int = PRUNE_BATCH


@dataclass(frozen=True, slots=True)
class PrunedKeys:
    """What a `PruneKeysOp` did: keys removed, and keys held before it."""

    removed: int
    held: int


@dataclass(frozen=True, slots=True)
class RememberedPublish:
    """A stored key's row: the message its first publish stored."""

    head_id: int
    message_id: str
    created_at_ms: int


def remembered_message(
    topic: str, origin: NodeId, remembered: RememberedPublish, held: Message | None
) -> Message:
    """The answer to a repeated key: the message as stored now, or its bare envelope.

    `held` is the stored row at the remembered head (None once retention trimmed it).
    """
    if held is not None and held.id == remembered.message_id:
        return held
    return Message(
        remembered.message_id, topic, origin, remembered.head_id, b"", {},
        remembered.created_at_ms, deleted=True,
    )  # fmt: skip


_BatchKey = tuple[str, NodeId, str]
"""(topic, origin, key): a key of one log, as a batch remembers it."""


class PublishKeyWriter(abc.ABC):
    """The rules of keyed appends and of pruning, written once; a store provides the rows."""

    # What the current batch knows of its keys: the stored row, or None for a key known to be
    # absent. A key missing here is unknown and is asked of the store (`_find_key`). Set by
    # `_look_up_keys` at the start of every batch.
    _batch_keys: dict[_BatchKey, RememberedPublish | None]

    def _look_up_keys(self, appends: Iterable[AppendOp]) -> None:
        """Before a batch's first op: find the keys of its keyed `appends`, one query per log.

        Called after the writer holds the batch's logs (on a shared PostgreSQL database, after
        their row locks), so a row another process committed for a key is seen.
        """
        wanted: dict[tuple[str, NodeId], dict[str, None]] = {}
        for op in appends:
            wanted.setdefault((op.topic, op.origin), {})[op.idempotency_key] = None
        known: dict[_BatchKey, RememberedPublish | None] = {}
        for (topic, origin), keys in wanted.items():
            found = self._find_keys(topic, origin, list(keys))
            for key in keys:
                known[(topic, origin, key)] = found.get(key)
        self._batch_keys = known

    def _forget_batch_keys(self) -> None:
        """After a batch: drop what it knew of its keys."""
        self._batch_keys = {}

    def _append_once(self, op: AppendOp) -> Message | DuplicatePublish:
        """Append `op` unless its key is stored for the log; then answer the first message."""
        entry = (op.topic, op.origin, op.idempotency_key)
        known = self._batch_keys
        if entry in known:
            remembered = known[entry]
        else:
            remembered = self._find_key(op.topic, op.origin, op.idempotency_key)
        if remembered is not None:
            held = self._held(op.topic, op.origin, remembered.head_id, remembered.head_id)
            message = remembered_message(op.topic, op.origin, remembered, held[0] if held else None)
            return DuplicatePublish(message)
        message = self._append(op)
        remembered = RememberedPublish(message.head_id, message.id, message.created_at_ms)
        self._store_key(op.topic, op.origin, op.idempotency_key, remembered)
        # A repeat later in the batch finds it here, before the row reaches the table.
        known[entry] = remembered
        return message

    def _prune_keys(self, op: PruneKeysOp) -> PrunedKeys:
        """Forget keys as `op` says, oldest first, at most `op.limit` of them."""
        # Any key the batch looked up may go: later appends of the batch ask the store again.
        self._forget_batch_keys()
        held = self._count_keys()
        removed = 0
        over = min(max(held - max(op.max_keys, 0), 0), op.limit)
        if over:
            removed = self._drop_oldest_keys(over, None)
        if op.limit > removed:
            removed += self._drop_oldest_keys(op.limit - removed, op.expired_before_ms)
        return PrunedKeys(removed, held)

    @abc.abstractmethod
    def _append(self, op: AppendOp) -> Message: ...

    @abc.abstractmethod
    def _held(self, topic: str, origin: NodeId, first: int, last: int) -> list[Message]: ...

    @abc.abstractmethod
    def _find_key(self, topic: str, origin: NodeId, key: str) -> RememberedPublish | None:
        """The stored row of `key` in the log (topic, origin), in the writer's transaction."""

    def _find_keys(
        self, topic: str, origin: NodeId, keys: Sequence[str]
    ) -> dict[str, RememberedPublish]:
        """The stored rows of those of `keys` the log holds, in the writer's transaction.

        The default asks `_find_key` for each; a SQL store answers in one query.
        """
        found = {}
        for key in keys:
            remembered = self._find_key(topic, origin, key)
            if remembered is not None:
                found[key] = remembered
        return found

    @abc.abstractmethod
    def _store_key(
        self, topic: str, origin: NodeId, key: str, remembered: RememberedPublish
    ) -> None:
        """Store a new key's row in its message's transaction.

        A later `_find_key` or `_find_keys` of the same transaction finds it.
        """

    @abc.abstractmethod
    def _count_keys(self) -> int:
        """How many keys the store holds."""

    @abc.abstractmethod
    def _drop_oldest_keys(self, count: int, before_ms: int | None) -> int:
        """Delete the `count` oldest keys (by created_at_ms, then key); how many went.

        With `before_ms`, only keys with created_at_ms below it are candidates.
        """


__all__ = [
    "DEFAULT_DEDUP_WINDOW_MS",
    "DEFAULT_MAX_KEYS",
    "MAX_KEY_BYTES",
    "PRUNE_BATCH",
    "DuplicatePublish",
    "PruneKeysOp",
    "PrunedKeys",
    "PublishKeyWriter",
    "RememberedPublish",
    "remembered_message",
    "validate_idempotency_key",
]
