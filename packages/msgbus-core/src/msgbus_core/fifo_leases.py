"""FIFO leases: several workers drain one queue in parallel, with attempts and dead letters.

A lease holds one message of a queue for a while (`visibility_ms`); nobody else is handed a
leased message until the lease ends. It ends by an ack (the message goes), a reject (a failed
attempt) or by expiring (a failed attempt too). A failed attempt adds 1 to the message's
attempts; when that reaches the queue's `max_attempts` (0: unlimited) the message moves, in the
same transaction, to the back of the queue's dead-letter queue `QUEUE.dead`, with the reason.

How the original front-only operations coexist with leases on one queue: for PeekFifo, AckFifo
and RejectFifo the front is the lowest sequence that no live lease holds. An original client
therefore never sees, acks or rejects a message a worker holds, and on a queue without leases
nothing changes. An expired lease is released (attempts + 1, maybe dead-lettered) by the next
lease or front operation on its queue, before that operation picks its messages, so a released
message keeps its place in sequence order.

The rules are written here once, over a handful of row primitives that each store implements
(`FifoLeaseRows`); the stores apply them inside their write transaction.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from msgbus_core.model import FifoMessage

if TYPE_CHECKING:
    from msgbus_core.ops import AckOp, RejectOp

DEAD_SUFFIX: Final = ".dead"
"""A queue's dead letters go to the queue named QUEUE + DEAD_SUFFIX."""
DEAD_BY_REJECT: Final = "max_attempts reached by reject"
"""`FifoMessage.dead_reason` of a message whose last failed attempt was a reject."""
DEAD_BY_EXPIRY: Final = "max_attempts reached by lease expiry"
"""`FifoMessage.dead_reason` of a message whose last failed attempt was an expired lease."""
RELEASE_PAGE: Final = 1_000
"""Expired leases read at a time while an operation releases them."""
MAX_ATTEMPTS: Final = 2**32 - 1
"""FIFO attempts are a uint32 on the wire and saturate there."""


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue of `queue`."""
    return queue + DEAD_SUFFIX


def is_dead_letter_queue(queue: str) -> bool:
    """Whether `queue` is a dead-letter queue: its messages are never dead-lettered again."""
    return queue.endswith(DEAD_SUFFIX)


def dead_reason(queue: str, attempts: int, max_attempts: int, by_reject: bool) -> str:
    """Why a message that now has `attempts` failed attempts goes dead; "" when it stays."""
    if max_attempts <= 0 or attempts < max_attempts or is_dead_letter_queue(queue):
        return ""
    return DEAD_BY_REJECT if by_reject else DEAD_BY_EXPIRY


def as_seen(message: FifoMessage, now_ms: int) -> FifoMessage:
    """`message` as a read at `now_ms` shows it: a lease that ran out shows as none."""
    if 0 < message.leased_until_ms <= now_ms:
        return dataclasses.replace(message, leased_until_ms=0)
    return message


def lease_id_of(sequence: int, token: str) -> str:
    """The lease id of the message `sequence`, leased by the op with `token`.

    It starts with the sequence so that ack, reject and extend find the row by its key.
    """
    return f"{sequence}.{token}"


def sequence_of(lease_id: str) -> int | None:
    """The sequence a lease id names, or None when it is not one of ours."""
    head, dot, _ = lease_id.partition(".")
    if not dot or not head.isascii() or not head.isdigit() or len(head) > 19:
        return None
    return int(head)


@dataclass(frozen=True, slots=True)
class FifoLease:
    """One leased message: the message (attempts so far), its lease id and expiry."""

    message: FifoMessage
    lease_id: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class LeasedRow:
    """A stored FIFO message and the id of the lease it carries ("" when never leased)."""

    message: FifoMessage
    lease_id: str


# -- operations (members of `msgbus_core.ops.WriteOp`) -----------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseOp:
    """Lease up to `max_messages` messages of `queue` nobody holds, lowest sequences first.

    Each gets the lease id `lease_id_of(sequence, token)` until `now_ms + visibility_ms`.
    Expired leases are released first (attempts + 1; dead-lettered at `max_attempts`).
    Result: a list of `FifoLease`, in sequence order (empty when nothing is available).
    """

    queue: str
    max_messages: int
    visibility_ms: int
    now_ms: int
    token: str
    max_attempts: int = 0


@dataclass(frozen=True, slots=True)
class AckLeaseOp:
    """Remove the message the live lease `lease_id` holds. Result: `bool` accepted."""

    queue: str
    lease_id: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class RejectLeaseOp:
    """End the live lease `lease_id` as a failed attempt. Result: a `RejectLeaseResult`."""

    queue: str
    lease_id: str
    now_ms: int
    max_attempts: int = 0


@dataclass(frozen=True, slots=True)
class RejectLeaseResult:
    """What a `RejectLeaseOp` did: whether the lease was held, and whether the message died."""

    accepted: bool
    dead_lettered: bool = False


@dataclass(frozen=True, slots=True)
class ExtendLeaseOp:
    """Make the live lease `lease_id` hold until `now_ms + visibility_ms`.

    Result: the new expiry in ms, or 0 when the lease is not held.
    """

    queue: str
    lease_id: str
    now_ms: int
    visibility_ms: int


@dataclass(frozen=True, slots=True)
class RedriveOp:
    """Move up to `max_messages` unleased dead letters of `queue` back to its back.

    They leave `QUEUE.dead` in sequence order and get new sequences in `queue`, with attempts 0
    and no dead reason (id, payload and the rest stay). Result: `int`, how many moved.
    """

    queue: str
    max_messages: int
    now_ms: int


LeaseWriteOp = LeaseOp | AckLeaseOp | RejectLeaseOp | ExtendLeaseOp | RedriveOp
"""The lease operations, for a store's dispatch."""


class FifoLeaseRows(abc.ABC):
    """The lease rules over a store's FIFO rows; `BatchWriter` mixes it in.

    Every method runs inside the store's write transaction. A store implements the abstract
    row primitives; everything else (what a lease picks, when a message dies) is here.
    """

    # -- row primitives -------------------------------------------------------------------------

    @abc.abstractmethod
    def _fifo_row(self, queue: str, sequence: int) -> LeasedRow | None:
        """The stored message `sequence` of `queue`, with its lease id."""

    @abc.abstractmethod
    def _fifo_expired(self, queue: str, now_ms: int, limit: int) -> list[LeasedRow]:
        """Up to `limit` messages of `queue` whose lease ran out by `now_ms`, by sequence."""

    @abc.abstractmethod
    def _fifo_unleased(self, queue: str, limit: int) -> list[FifoMessage]:
        """Up to `limit` messages of `queue` with no lease (leased_until_ms 0), by sequence."""

    @abc.abstractmethod
    def _fifo_set_lease(
        self, queue: str, sequence: int, attempts: int, lease_id: str, leased_until_ms: int
    ) -> None:
        """Store a message's attempts and lease ("" and 0: none)."""

    @abc.abstractmethod
    def _fifo_remove(self, queue: str, sequence: int) -> None:
        """Delete one message of `queue`."""

    @abc.abstractmethod
    def _next_sequence(self, queue: str) -> int:
        """Hand out the next sequence of `queue` (1 for a new queue; never reused)."""

    @abc.abstractmethod
    def _store_fifo(self, message: FifoMessage) -> None:
        """Insert a message (its queue and sequence are new) with no lease."""

    # -- the rules ------------------------------------------------------------------------------

    def _release_expired(self, queue: str, now_ms: int, max_attempts: int) -> None:
        """End every expired lease of `queue` as a failed attempt (see the module docstring)."""
        while expired := self._fifo_expired(queue, now_ms, RELEASE_PAGE):
            for row in expired:
                self._fail(row.message, max_attempts, by_reject=False)

    def _fail(self, message: FifoMessage, max_attempts: int, *, by_reject: bool) -> bool:
        """Count a failed attempt: the message is available again, or dead. True when dead."""
        attempts = min(message.attempts + 1, MAX_ATTEMPTS)
        reason = dead_reason(message.queue, attempts, max_attempts, by_reject)
        if not reason:
            self._fifo_set_lease(message.queue, message.sequence, attempts, "", 0)
            return False
        self._fifo_remove(message.queue, message.sequence)
        self._move(message, dead_letter_queue(message.queue), attempts, reason)
        return True

    def _move(self, message: FifoMessage, queue: str, attempts: int, reason: str) -> None:
        """Append `message` to the back of `queue`, under a new sequence there."""
        self._store_fifo(
            dataclasses.replace(
                message,
                queue=queue,
                sequence=self._next_sequence(queue),
                attempts=attempts,
                dead_reason=reason,
                leased_until_ms=0,
            )
        )

    def _leased_by(self, queue: str, lease_id: str, now_ms: int) -> FifoMessage | None:
        """The message the lease `lease_id` holds, if that lease is live at `now_ms`."""
        sequence = sequence_of(lease_id)
        row = None if sequence is None else self._fifo_row(queue, sequence)
        if row is None or row.lease_id != lease_id or row.message.leased_until_ms <= now_ms:
            return None
        return row.message

    def _lease(self, op: LeaseOp) -> list[FifoLease]:
        self._release_expired(op.queue, op.now_ms, op.max_attempts)
        expires = op.now_ms + op.visibility_ms
        leases = []
        for message in self._fifo_unleased(op.queue, op.max_messages):
            lease_id = lease_id_of(message.sequence, op.token)
            self._fifo_set_lease(op.queue, message.sequence, message.attempts, lease_id, expires)
            leased = dataclasses.replace(message, leased_until_ms=expires)
            leases.append(FifoLease(leased, lease_id, expires))
        return leases

    def _ack_lease(self, op: AckLeaseOp) -> bool:
        message = self._leased_by(op.queue, op.lease_id, op.now_ms)
        if message is None:
            return False
        self._fifo_remove(op.queue, message.sequence)
        return True

    def _reject_lease(self, op: RejectLeaseOp) -> RejectLeaseResult:
        message = self._leased_by(op.queue, op.lease_id, op.now_ms)
        if message is None:
            return RejectLeaseResult(False)
        return RejectLeaseResult(True, self._fail(message, op.max_attempts, by_reject=True))

    def _extend_lease(self, op: ExtendLeaseOp) -> int:
        message = self._leased_by(op.queue, op.lease_id, op.now_ms)
        if message is None:
            return 0
        expires = op.now_ms + op.visibility_ms
        self._fifo_set_lease(op.queue, message.sequence, message.attempts, op.lease_id, expires)
        return expires

    def _redrive(self, op: RedriveOp) -> int:
        dead = dead_letter_queue(op.queue)
        self._release_expired(dead, op.now_ms, 0)
        moved = self._fifo_unleased(dead, op.max_messages)
        for message in moved:
            self._fifo_remove(dead, message.sequence)
            self._move(message, op.queue, 0, "")
        return len(moved)

    def _front_unleased(
        self, queue: str, message_id: str, now_ms: int, max_attempts: int
    ) -> FifoMessage | None:
        """The original clients' front (the lowest unleased message), if it is `message_id`."""
        self._release_expired(queue, now_ms, max_attempts)
        front = self._fifo_unleased(queue, 1)
        return front[0] if front and front[0].id == message_id else None

    def _ack(self, op: AckOp) -> bool:
        front = self._front_unleased(op.queue, op.message_id, op.now_ms, op.max_attempts)
        if front is None:
            return False
        self._fifo_remove(op.queue, front.sequence)
        return True

    def _reject(self, op: RejectOp) -> bool:
        front = self._front_unleased(op.queue, op.message_id, op.now_ms, op.max_attempts)
        if front is None:
            return False
        # An original reject is a failed attempt too, and counts toward max_attempts.
        self._fail(front, op.max_attempts, by_reject=True)
        return True


__all__ = [
    "DEAD_BY_EXPIRY",
    "MAX_ATTEMPTS",
    "DEAD_BY_REJECT",
    "DEAD_SUFFIX",
    "AckLeaseOp",
    "ExtendLeaseOp",
    "FifoLease",
    "FifoLeaseRows",
    "LeaseOp",
    "LeaseWriteOp",
    "LeasedRow",
    "RedriveOp",
    "RejectLeaseOp",
    "RejectLeaseResult",
    "as_seen",
    "dead_letter_queue",
    "dead_reason",
    "is_dead_letter_queue",
    "lease_id_of",
    "sequence_of",
]
