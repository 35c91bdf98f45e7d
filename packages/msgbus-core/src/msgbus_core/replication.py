"""The rules for accepting a message from a peer, shared by every store.

A store calls `check_replicated` on each incoming message, takes its stored form from
`replicated_copy` (which applies the log's tombstones and refuses a deleted copy they do not
cover), looks up what it already holds at that head, and asks `decide` what to do. Keeping the
rules here means no backend can differ.
"""

from __future__ import annotations

import enum
import functools

from msgbus_core.errors import ConflictError, GapError, InvalidArgumentError, PermissionDeniedError
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import Message, NodeId, TombstoneRange
from msgbus_core.validation import (
    validate_headers,
    validate_name,
    validate_stored_int,
    validate_topic,
)


class Decision(enum.Enum):
    """What a store does with an incoming replicated message."""

    INSERT = "insert"
    """No row at that head: insert it."""
    UNCHANGED = "unchanged"
    """The stored row already says the same (or is deleted, and deleted wins), or the head was
    trimmed here."""
    MARK_DELETED = "mark_deleted"
    """The incoming copy is deleted and the stored one is not: mark the row deleted and erase it."""


@functools.lru_cache(maxsize=1024)
def _validated_origin(origin: NodeId) -> NodeId:
    # A sync batch carries the same few origins thousands of times; check each once.
    return origin.validate("message.origin")


@functools.lru_cache(maxsize=1024)
def _validated_topic(topic: str) -> str:
    # Likewise the topic: a batch is one log, so its topic is checked once, not per message
    # (a str caches its hash, so the lookup costs less than the check).
    return validate_topic(topic, "message.topic")


def check_replicated(message: Message) -> Message:
    """Validate a message received from a peer and return it in stored form.

    A deleted message is returned erased. A delete marker is parsed here too, so a malformed
    marker is refused before anything is stored.

    Raises:
        InvalidArgumentError: a field is malformed or out of range.
        PermissionDeniedError: a delete marker sent deleted, or one naming another origin's log.
    """
    validate_name("message.id", message.id)
    _validated_topic(message.topic)
    _validated_origin(message.origin)
    if message.head_id == 0:
        raise InvalidArgumentError("message.head_id must be greater than zero")
    validate_stored_int("message.head_id", message.head_id)
    validate_stored_int("message.created_at_ms", message.created_at_ms)
    if message.deleted:
        if message.topic == DELETE_TOPIC:
            # Stored deleted, the marker would be a row whose tombstone is never recorded, and
            # the genuine marker arriving later would be an unchanged copy of it.
            raise PermissionDeniedError(
                f"deleted copy of a delete marker refused at topic={message.topic} "
                f"origin={message.origin.key} head_id={message.head_id}: a delete marker is "
                "never deleted; a relay that sends one deleted would cancel the delete"
            )
        return message.erased()
    if message.headers:
        # The header limits bind every node, so a peer cannot store what a client could not.
        validate_headers(message.headers, "message.headers")
    if message.topic == DELETE_TOPIC:
        marker_tombstone(message)
    return message


def marker_tombstone(marker: Message) -> TombstoneRange:
    """Parse the tombstone a delete marker carries; a node may only delete its own log.

    That is all a marker can be checked for: it may delete only logs of the origin whose
    `$msgbus.delete` log it sits in. Markers are not signed, so a peer that relays origin X's
    log can forge a marker of X deleting X's messages; only markers of the local origin are
    fully protected, because a daemon never takes its own logs from a peer (SECURITY.md).

    Raises:
        InvalidArgumentError: the payload is not a valid tombstone.
        PermissionDeniedError: the tombstone names a log of another origin.
    """
    tombstone = TombstoneRange.from_marker_payload(marker.payload)
    if tombstone.origin != marker.origin:
        raise PermissionDeniedError(
            f"delete marker from {marker.origin.key} names the log of {tombstone.origin.key}: "
            "a delete marker origin must match its tombstone origin"
        )
    return tombstone


def marker_still_needed(tombstone: TombstoneRange, held: tuple[int, int]) -> bool:
    """True while the log a delete marker names holds a head of its range.

    `held` is that log's (start, head): it holds start..head. Until then the marker must stay,
    so that a peer pulling the marker log learns of the delete while the messages exist.
    """
    start, head = held
    return max(tombstone.from_head_id, start) <= min(tombstone.to_head_id, head)


def rebase_point(op_first_head: int, first: Message | None, local_head: int) -> int:
    """Where a replicate must restart the local log to take a peer's trimmed copy; 0 if not.

    Only when the peer said where its copy starts (`op_first_head`), the batch starts exactly
    there, and the local copy ends before it (otherwise the batch is an ordinary one).
    """
    if not op_first_head or first is None or first.head_id != op_first_head:
        return 0
    return op_first_head if local_head + 1 < op_first_head else 0


def apply_tombstones(message: Message, tombstones: TombstoneSet) -> Message:
    """The message as stored: erased when a tombstone of its log covers its head.

    `tombstones` is the log's merged set, so this costs a bisection, however many deletes the
    log has seen.
    """
    if not message.deleted and tombstones.covers(message.head_id):
        return message.erased()
    return message


def replicated_copy(message: Message, tombstones: TombstoneSet | None, start: int = 1) -> Message:
    """A checked replicated message as stored: `apply_tombstones`, refusing unproven deletes.

    `tombstones` is the log's merged set (None for a log not held yet) and `start` its lowest
    head not trimmed. Only a log's origin deletes its messages, and it always records the delete
    in a marker of its `$msgbus.delete` log, which sync pulls before the other logs. So a copy
    sent deleted is taken only when a held marker covers its head (one held already, or one that
    arrived earlier in this sync pass); without one, the peer would be deleting another node's
    message on its own authority. A copy of a trimmed head is left to `decide`, which takes it
    as unchanged whatever it says.

    Raises:
        PermissionDeniedError: the copy is deleted and no tombstone of its log covers its head.
    """
    if not message.deleted:
        # Most logs never saw a delete: their empty set needs no bisection per message.
        return apply_tombstones(message, tombstones) if tombstones else message
    if message.head_id >= start and (tombstones is None or not tombstones.covers(message.head_id)):
        raise PermissionDeniedError(
            f"deleted copy without a covering delete marker from origin {message.origin.key} "
            f"refused at topic={message.topic} origin={message.origin.key} "
            f"head_id={message.head_id}: only the origin deletes its messages, and it records "
            f"each delete in its {DELETE_TOPIC} log"
        )
    return message


def decide(
    existing: Message | None, incoming: Message, current_head: int, start: int = 1
) -> Decision:
    """Decide how to store `incoming` (already checked and tombstoned) given the stored row.

    `start` is the lowest head the local log did not trim: a copy of a trimmed message is not
    brought back (retention removed it on purpose), so it counts as unchanged.
    Raises `GapError` when the message would leave a gap, and `ConflictError` when the stored
    row differs in anything but the deleted flag.
    """
    if incoming.head_id < start:
        return Decision.UNCHANGED
    if existing is None:
        if incoming.head_id > current_head + 1:
            raise GapError(
                f"replicated message would create a gap at topic={incoming.topic} "
                f"origin={incoming.origin.key} local_head={current_head} "
                f"incoming_head={incoming.head_id}"
            )
        return Decision.INSERT
    if existing == incoming:
        return Decision.UNCHANGED
    same_identity = existing.id == incoming.id and existing.created_at_ms == incoming.created_at_ms
    if same_identity and existing.deleted:
        return Decision.UNCHANGED
    if same_identity and incoming.deleted:
        return Decision.MARK_DELETED
    raise ConflictError(
        f"message conflict at topic={incoming.topic} origin={incoming.origin.key} "
        f"head_id={incoming.head_id}: the peer's copy differs from the stored one"
    )
