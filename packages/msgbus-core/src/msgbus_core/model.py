"""The domain model: nodes, logs, messages, tombstones, FIFO messages and sync state.

All types are immutable dataclasses. They carry no wire or storage concerns; the daemon converts
them to protobuf and the stores to rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.limits import DELETE_TOPIC, MAX_STORED_INT
from msgbus_core.validation import (
    validate_node_part,
    validate_stored_int,
    validate_topic,
    validate_u64,
)

EMPTY_HEADERS: Mapping[str, str] = {}


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """The identity of one daemon: (tenant_id, bl_name, device_id).

    Its key is `tenant_id/bl_name/device_id`. Parts may not contain `/`, so the key is
    unambiguous and two different NodeIds never share one.
    """

    tenant_id: str
    bl_name: str
    device_id: str

    @property
    def key(self) -> str:
        """`tenant_id/bl_name/device_id`."""
        return f"{self.tenant_id}/{self.bl_name}/{self.device_id}"

    @property
    def is_empty(self) -> bool:
        """True when all three parts are empty, which requests use to mean the local node."""
        return not (self.tenant_id or self.bl_name or self.device_id)

    def validate(self, field_name: str = "origin") -> Self:
        """Check every part; raise `InvalidArgumentError` naming the bad part."""
        validate_node_part(f"{field_name}.tenant_id", self.tenant_id)
        validate_node_part(f"{field_name}.bl_name", self.bl_name)
        validate_node_part(f"{field_name}.device_id", self.device_id)
        return self

    @classmethod
    def from_key(cls, key: str, field_name: str = "node") -> NodeId:
        """Parse and validate `tenant_id/bl_name/device_id`."""
        parts = key.split("/")
        if len(parts) != 3:
            raise InvalidArgumentError(
                f"{field_name} must have the form tenant_id/bl_name/device_id, got {key!r}"
            )
        return cls(*parts).validate(field_name)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a log. A deleted message has an empty payload and no headers."""

    id: str
    topic: str
    origin: NodeId
    head_id: int
    payload: bytes
    headers: Mapping[str, str]
    created_at_ms: int
    deleted: bool = False

    def erased(self) -> Message:
        """This message as a tombstone leaves it: deleted, payload and headers erased."""
        return Message(
            id=self.id,
            topic=self.topic,
            origin=self.origin,
            head_id=self.head_id,
            payload=b"",
            headers=EMPTY_HEADERS,
            created_at_ms=self.created_at_ms,
            deleted=True,
        )


@dataclass(frozen=True, slots=True)
class TopicHead:
    """One log's extent: its highest head_id, the lowest it still holds, and its bytes.

    A log holds every head from `first_head_id` to `head_id`. Retention trims a prefix, so
    `first_head_id` rises above 1; when everything was trimmed the log holds nothing and
    `first_head_id` is 0, while `head_id` stays (heads are never reused).
    """

    topic: str
    origin: NodeId
    head_id: int
    first_head_id: int = 0
    """The lowest head still held; 0 when the log holds no message."""
    bytes: int = 0
    """The `read_size` total of the messages held (a deleted message counts 0)."""

    @property
    def count(self) -> int:
        """How many messages the log holds (deleted ones included: they keep their head)."""
        return self.head_id - self.first_head_id + 1 if self.first_head_id else 0


def page_of_heads(
    heads: list[TopicHead], after: tuple[str, str] | None = None, limit: int | None = None
) -> list[TopicHead]:
    """`heads` in ListHeads order (topic, then origin key), past `after`, at most `limit`."""
    ordered = sorted(heads, key=lambda h: (h.topic, h.origin.key))
    if after is not None:
        ordered = [h for h in ordered if (h.topic, h.origin.key) > after]
    return ordered if limit is None else ordered[: max(limit, 0)]


def first_held(start: int, head: int) -> int:
    """The `first_head_id` of a log whose untrimmed heads start at `start`, up to `head`."""
    return start if start <= head else 0


@dataclass(frozen=True, slots=True)
class TombstoneRange:
    """A delete of heads `from_head_id..to_head_id` (inclusive) of one log.

    It travels between daemons as the payload of a marker message on `$msgbus.delete`, in the
    original msgbus's compact JSON, so original daemons understand our markers and we theirs.
    """

    topic: str
    origin: NodeId
    from_head_id: int
    to_head_id: int
    created_at_ms: int

    def covers(self, head_id: int) -> bool:
        """True when `head_id` lies in the range."""
        return self.from_head_id <= head_id <= self.to_head_id

    def to_marker_payload(self) -> bytes:
        """The marker payload, byte-identical to the original's serde_json output."""
        document = {
            "topic": self.topic,
            "origin": {
                "tenant_id": self.origin.tenant_id,
                "bl_name": self.origin.bl_name,
                "device_id": self.origin.device_id,
            },
            "from_head_id": self.from_head_id,
            "to_head_id": self.to_head_id,
            "created_at_ms": self.created_at_ms,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_marker_payload(cls, payload: bytes) -> TombstoneRange:
        """Parse and validate a marker payload; raise `InvalidArgumentError` when malformed."""
        try:
            document = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise InvalidArgumentError(f"invalid tombstone payload: {error}") from None
        if not isinstance(document, dict):
            raise InvalidArgumentError("invalid tombstone payload: not a JSON object")
        origin = document.get("origin")
        if not isinstance(origin, dict):
            raise InvalidArgumentError("invalid tombstone payload: origin is not an object")
        tombstone = cls(
            topic=_json_str(document, "topic"),
            origin=NodeId(
                _json_str(origin, "tenant_id"),
                _json_str(origin, "bl_name"),
                _json_str(origin, "device_id"),
            ),
            from_head_id=_json_int(document, "from_head_id"),
            # Original redb nodes write u64::MAX for "delete everything". No store holds a head
            # above MAX_STORED_INT, so clamping keeps the meaning and lets the marker apply.
            to_head_id=min(_json_int(document, "to_head_id", wide=True), MAX_STORED_INT),
            created_at_ms=_json_int(document, "created_at_ms"),
        )
        validate_topic(tombstone.topic, "tombstone topic")
        if tombstone.topic == DELETE_TOPIC:
            raise InvalidArgumentError(f"tombstone topic may not be {DELETE_TOPIC}")
        tombstone.origin.validate("tombstone origin")
        if tombstone.from_head_id > tombstone.to_head_id:
            raise InvalidArgumentError(
                "tombstone from_head_id must be <= to_head_id, got "
                f"{tombstone.from_head_id} > {tombstone.to_head_id}"
            )
        return tombstone


def _json_str(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"invalid tombstone payload: {key} is not a string")
    return value


def _json_int(document: dict[str, Any], key: str, *, wide: bool = False) -> int:
    """An integer field: a stored int, or any u64 when `wide` (the caller clamps it)."""
    value = document.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(f"invalid tombstone payload: {key} is not an integer")
    if wide:
        return validate_u64(f"tombstone {key}", value)
    return validate_stored_int(f"tombstone {key}", value)


@dataclass(frozen=True, slots=True)
class FifoMessage:
    """One message of a local FIFO queue. `sequence` orders the queue and is never reused."""

    id: str
    queue: str
    topic: str
    source: NodeId
    target: NodeId
    payload: bytes
    headers: Mapping[str, str]
    created_at_ms: int
    sequence: int
    attempts: int = 0
    dead_reason: str = ""
    """Set in a dead-letter queue `QUEUE.dead`: why the message was moved there."""
    leased_until_ms: int = 0
    """When a lease holds the message, until when (ms since the epoch); 0 when none does."""


@dataclass(frozen=True, slots=True)
class FifoQueueSummary:
    """One FIFO queue that holds messages: how many, and how often they were rejected."""

    queue: str
    depth: int
    """Messages in the queue (at least 1: an empty queue is not summarised)."""
    attempts: int
    """The `attempts` total of those messages: how many redeliveries they have had."""
    leased: int = 0
    """Those of them a lease holds or held until it expired (released by the next lease)."""


@dataclass(frozen=True, slots=True)
class PeerSyncState:
    """What sync last did with one peer (topic "" and origin None) or one log from that peer."""

    peer: str
    topic: str = ""
    origin: NodeId | None = None
    local_head: int = 0
    remote_head: int = 0
    last_synced_head: int = 0
    last_attempt_at_ms: int = 0
    last_success_at_ms: int = 0
    consecutive_failures: int = 0
    last_error: str = ""

    @property
    def sort_key(self) -> tuple[str, str, str]:
        """The listing order: peer, topic, origin key (peer-level records first)."""
        return (self.peer, self.topic, self.origin.key if self.origin else "")


@dataclass(frozen=True, slots=True)
class LogKey:
    """Names one log: a (topic, origin) pair."""

    topic: str
    origin: NodeId

    @property
    def sort_key(self) -> tuple[str, str]:
        """ListHeads order: topic, then origin key, both by code point (= UTF-8 byte order)."""
        return (self.topic, self.origin.key)
