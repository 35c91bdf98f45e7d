"""Column codecs shared by the store backends: building messages from rows, and header JSON.

Every backend stores the same values, so the conversions live here once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from msgbus_core.model import FifoMessage, Message, NodeId, PeerSyncState
from msgbus_core.validation import validate_stored_int

MessageFactory = Callable[[str, str, NodeId, int, bytes, Mapping[str, str], int, bool], Message]

_MESSAGE_FIELDS = (
    "id",
    "topic",
    "origin",
    "head_id",
    "payload",
    "headers",
    "created_at_ms",
    "deleted",
)


def _message_factory() -> MessageFactory:
    """`Message(...)` for rows read from the database, built at half the cost when possible.

    A frozen dataclass's `__init__` sets every field through `object.__setattr__`, which is
    about half of a fetched row's Python time. Writing the slots directly builds an identical
    object. It is used only while `Message` has exactly the fields below and no
    `__post_init__`; if the model ever changes shape, the real constructor is used instead.
    """
    names = tuple(f.name for f in dataclasses.fields(Message))
    if names != _MESSAGE_FIELDS or hasattr(Message, "__post_init__"):
        return Message
    s_id, s_topic, s_origin, s_head, s_payload, s_headers, s_created, s_deleted = (
        getattr(Message, name).__set__ for name in names
    )
    allocate = object.__new__

    def build(
        message_id: str,
        topic: str,
        origin: NodeId,
        head_id: int,
        payload: bytes,
        headers: Mapping[str, str],
        created_at_ms: int,
        deleted: bool,
    ) -> Message:
        message: Message = allocate(Message)
        s_id(message, message_id)
        s_topic(message, topic)
        s_origin(message, origin)
        s_head(message, head_id)
        s_payload(message, payload)
        s_headers(message, headers)
        s_created(message, created_at_ms)
        s_deleted(message, deleted)
        return message

    return build


new_message: MessageFactory = _message_factory()
"""Build a `Message` from column values (the read path's constructor)."""

# Built once: `json.dumps`/`json.loads` with options build a new encoder or decoder per call,
# which costs more than encoding a message's few headers.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().raw_decode


def encode_headers(headers: Mapping[str, str]) -> str | None:
    """Headers as compact JSON (insertion order kept), or NULL when there are none.

    JSON keeps the column readable by other tools (`json_extract(headers, '$.key')`).
    """
    if not headers:
        return None
    return _encode(dict(headers))


def decode_headers(raw: str | None) -> dict[str, str]:
    """The inverse of `encode_headers`."""
    if not raw:
        return {}
    headers: dict[str, str] = _decode(raw)[0]
    return headers


FIFO_COLUMNS: Final = (
    "queue, sequence, id, topic, source_tenant_id, source_bl_name, source_device_id, "
    "target_tenant_id, target_bl_name, target_device_id, payload, headers, created_at_ms, "
    "attempts, leased_until_ms, dead_reason"
)
"""The `fifo_messages` columns, in the order of `fifo_row` and `fifo_from_row`."""

SYNC_COLUMNS: Final = (
    "peer, topic, origin_key, origin_tenant_id, origin_bl_name, origin_device_id, local_head, "
    "remote_head, last_synced_head, last_attempt_at_ms, last_success_at_ms, "
    "consecutive_failures, last_error"
)
"""The `sync_states` columns, in the order of `sync_state_row` and `sync_state_from_row`."""


def fifo_row(message: FifoMessage) -> tuple[Any, ...]:
    """A FIFO message as `FIFO_COLUMNS` values."""
    return (
        message.queue,
        message.sequence,
        message.id,
        message.topic,
        message.source.tenant_id,
        message.source.bl_name,
        message.source.device_id,
        message.target.tenant_id,
        message.target.bl_name,
        message.target.device_id,
        message.payload,
        encode_headers(message.headers),
        message.created_at_ms,
        message.attempts,
        message.leased_until_ms,
        message.dead_reason,
    )


def fifo_from_row(row: Sequence[Any]) -> FifoMessage:
    """The inverse of `fifo_row`."""
    queue, sequence, message_id, topic, *source, target_tenant, target_bl, target_device = row[:10]
    payload, headers, created_at_ms, attempts, leased_until_ms, reason = row[10:16]
    return FifoMessage(
        id=message_id,
        queue=queue,
        topic=topic,
        source=NodeId(*source),
        target=NodeId(target_tenant, target_bl, target_device),
        payload=payload,
        headers=decode_headers(headers),
        created_at_ms=created_at_ms,
        sequence=sequence,
        attempts=attempts,
        dead_reason=reason,
        leased_until_ms=leased_until_ms,
    )


def sync_state_row(state: PeerSyncState) -> tuple[Any, ...]:
    """A sync state as `SYNC_COLUMNS` values; numbers beyond signed 64 bits are refused."""
    numbers = (
        ("local_head", state.local_head),
        ("remote_head", state.remote_head),
        ("last_synced_head", state.last_synced_head),
        ("last_attempt_at_ms", state.last_attempt_at_ms),
        ("last_success_at_ms", state.last_success_at_ms),
        ("consecutive_failures", state.consecutive_failures),
    )
    for name, value in numbers:
        validate_stored_int(name, value)
    origin = state.origin
    peer, topic, origin_key = state.sort_key
    return (
        peer,
        topic,
        origin_key,
        None if origin is None else origin.tenant_id,
        None if origin is None else origin.bl_name,
        None if origin is None else origin.device_id,
        *(value for _, value in numbers),
        state.last_error,
    )


def sync_state_from_row(row: Sequence[Any]) -> PeerSyncState:
    """The inverse of `sync_state_row`."""
    (peer, topic, _key, tenant, bl, device, *numbers, last_error) = row
    origin = None if tenant is None else NodeId(str(tenant), str(bl), str(device))
    local, remote, synced, attempt, success, failures = (int(n) for n in numbers)
    return PeerSyncState(
        str(peer),
        str(topic),
        origin,
        local,
        remote,
        synced,
        attempt,
        success,
        failures,
        str(last_error),
    )


__all__ = [
    "FIFO_COLUMNS",
    "SYNC_COLUMNS",
    "MessageFactory",
    "decode_headers",
    "encode_headers",
    "fifo_from_row",
    "fifo_row",
    "new_message",
    "sync_state_from_row",
    "sync_state_row",
]
