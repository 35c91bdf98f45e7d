"""Request builders shared by the async and the blocking client, so both send the same bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from msgbus_proto import pb

from ._convert import NodeLike, Payload, to_payload, to_pb_node
from ._errors import ConfigurationError

MAX_PAGE = 10_000
"""The daemon caps Fetch ``limit``, Subscribe ``replay_limit`` and the ``page_size`` of ListHeads
and ListPeerSyncStates at this value."""

PACKING = 256
"""Envelopes per streamed response the SDK asks for (the ``max_messages_per_response``
extension). One message per response caps a stream at roughly 15-25 k msg/s; packing lifts
that. Original daemons ignore the field and answer one envelope per response."""


def _u64(name: str, value: int) -> int:
    # Checked here so that a negative number is a clear error instead of protobuf's ValueError.
    if value < 0 or value >= 1 << 64:
        raise ConfigurationError(f"{name} must be between 0 and 2**64-1, got {value}")
    return value


def _u32(name: str, value: int) -> int:
    if value < 0 or value >= 1 << 32:
        raise ConfigurationError(f"{name} must be between 0 and 2**32-1, got {value}")
    return value


def publish(
    topic: str,
    payload: Payload,
    headers: Mapping[str, str] | None,
    origin: NodeLike | None,
    idempotency_key: str = "",
) -> pb.PublishRequest:
    """A PublishRequest; an empty ``idempotency_key`` means none."""
    return pb.PublishRequest(
        topic=topic,
        origin=to_pb_node(origin),
        payload=to_payload(payload),
        headers=headers,
        idempotency_key=idempotency_key,
    )


class PublishEntry(NamedTuple):
    """One message of :meth:`~msgbus_sdk.AsyncMsgbusClient.publish_batch`.

    A named tuple, so a plain ``(topic, payload)`` or ``(topic, payload, headers)`` tuple is an
    entry too. The fields follow the rules of ``publish``.
    """

    topic: str
    """The topic of the local log to append to."""
    payload: Payload
    """Payload bytes; a ``str`` is encoded as UTF-8."""
    headers: Mapping[str, str] | None = None
    """Application headers, or ``None`` for none."""
    idempotency_key: str | None = None
    """The entry's idempotency key; ``None``: one the client makes (see ``auto_idempotency``)."""


BatchEntry = PublishEntry | tuple[str, Payload] | tuple[str, Payload, Mapping[str, str] | None]
"""What ``publish_batch`` accepts per entry: a :class:`PublishEntry` or a plain tuple."""


def publish_batch(
    entries: Iterable[BatchEntry],
    origin: NodeLike | None,
    new_key: Callable[[], str] | None = None,
) -> pb.PublishBatchRequest:
    """A PublishBatchRequest; every entry gets the client's default origin, like ``publish``.

    An entry without a key of its own gets ``new_key()``, when given.
    """
    node = to_pb_node(origin)
    built: list[pb.PublishRequest] = []
    for index, entry in enumerate(entries):
        key: str | None = None
        if isinstance(entry, PublishEntry):
            key = entry.idempotency_key
        elif not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise ConfigurationError(
                f"entries[{index}] must be (topic, payload) or (topic, payload, headers), "
                f"got {entry!r:.80}"
            )
        headers = entry[2] if len(entry) >= 3 else None
        if key is None and new_key is not None:
            key = new_key()
        built.append(
            pb.PublishRequest(
                topic=entry[0],
                origin=node,
                payload=to_payload(entry[1]),
                headers=headers,
                idempotency_key=key or "",
            )
        )
    return pb.PublishBatchRequest(entries=built)


def fetch(topic: str, origin: NodeLike | None, from_head_id: int, limit: int) -> pb.FetchRequest:
    """A FetchRequest."""
    return pb.FetchRequest(
        topic=topic,
        origin=to_pb_node(origin),
        from_head_id=_u64("from_head_id", from_head_id),
        limit=_u32("limit", limit),
        max_messages_per_response=PACKING,
    )


def subscribe(
    topic: str, origin: NodeLike | None, from_head_id: int, replay_limit: int
) -> pb.SubscribeRequest:
    """A SubscribeRequest."""
    return pb.SubscribeRequest(
        topic=topic,
        origin=to_pb_node(origin),
        from_head_id=_u64("from_head_id", from_head_id),
        replay_limit=_u32("replay_limit", replay_limit),
        max_messages_per_response=PACKING,
    )


def subscribe_pattern(
    topic_pattern: str,
    origin_pattern: str | None,
    from_head_id: int,
    replay_limit: int,
    resume_after: Mapping[tuple[str, str], int],
) -> pb.SubscribeRequest:
    """A pattern SubscribeRequest; ``resume_after`` maps (topic, origin key) to a last head."""
    if not topic_pattern:
        raise ConfigurationError("topic_pattern must be a topic glob such as 'telemetry.*'")
    return pb.SubscribeRequest(
        topic_pattern=topic_pattern,
        origin_pattern=origin_pattern or "",
        from_head_id=_u64("from_head_id", from_head_id),
        replay_limit=_u32("replay_limit", replay_limit),
        max_messages_per_response=PACKING,
        resume_after=[
            pb.TopicHead(topic=topic, origin=to_pb_node(origin), head_id=_u64("head_id", head))
            for (topic, origin), head in resume_after.items()
        ],
    )


def get_head(topic: str, origin: NodeLike | None) -> pb.GetHeadRequest:
    """A GetHeadRequest."""
    return pb.GetHeadRequest(topic=topic, origin=to_pb_node(origin))


def list_heads(size: int, cursor: str | None = None) -> pb.ListHeadsRequest:
    """The first ListHeadsRequest of a listing: every head, or those changed since ``cursor``."""
    if cursor is None:
        return pb.ListHeadsRequest(page_size=page_size(size))
    if not cursor:
        # The contract reads an empty changed_since as "no cursor": a silent full listing
        # would hide that the caller lost its cursor.
        raise ConfigurationError(
            "cursor must be a cursor from an earlier list_heads_changed, or None to list every "
            "head, got ''"
        )
    return pb.ListHeadsRequest(page_size=page_size(size), changed_since=cursor)


def next_heads_page(request: pb.ListHeadsRequest, token: str) -> pb.ListHeadsRequest:
    """The request for the page after the one ``request`` got, whose next_page_token is ``token``.

    A listing of changes goes on from the token as its cursor (changed_since); a listing of
    every head goes on from it as its page_token.
    """
    if request.changed_since:
        return pb.ListHeadsRequest(page_size=request.page_size, changed_since=token)
    return pb.ListHeadsRequest(page_size=request.page_size, page_token=token)


def delete_range(
    topic: str, origin: NodeLike | None, from_head_id: int, to_head_id: int
) -> pb.DeleteRangeRequest:
    """A DeleteRangeRequest."""
    return pb.DeleteRangeRequest(
        topic=topic,
        origin=to_pb_node(origin),
        from_head_id=_u64("from_head_id", from_head_id),
        to_head_id=_u64("to_head_id", to_head_id),
    )


def enqueue_fifo(
    queue: str,
    topic: str,
    target: NodeLike,
    payload: Payload,
    headers: Mapping[str, str] | None,
    source: NodeLike | None,
) -> pb.EnqueueFifoRequest:
    """An EnqueueFifoRequest."""
    return pb.EnqueueFifoRequest(
        queue=queue,
        topic=topic,
        source=to_pb_node(source),
        target=to_pb_node(target),
        payload=to_payload(payload),
        headers=headers,
    )


def commit_cursor(
    name: str, topic: str, origin: NodeLike | None, head_id: int
) -> pb.CommitCursorRequest:
    """A CommitCursorRequest."""
    return pb.CommitCursorRequest(
        name=name, topic=topic, origin=to_pb_node(origin), head_id=_u64("head_id", head_id)
    )


def list_cursors(name: str | None, size: int, token: str = "") -> pb.ListCursorsRequest:
    """A ListCursorsRequest for one page."""
    return pb.ListCursorsRequest(name=name or "", page_size=size, page_token=token)


def page_size(value: int) -> int:
    """Validate the page size of an ``iter_*`` method."""
    if not 1 <= value <= MAX_PAGE:
        raise ConfigurationError(f"page_size must be between 1 and {MAX_PAGE}, got {value}")
    return value
