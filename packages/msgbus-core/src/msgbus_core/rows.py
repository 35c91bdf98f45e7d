"""Column codecs shared by the store backends: building messages from rows, and header JSON.

Every backend stores the same values, so the conversions live here once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping

from msgbus_core.model import Message, NodeId

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


__all__ = ["MessageFactory", "decode_headers", "encode_headers", "new_message"]
