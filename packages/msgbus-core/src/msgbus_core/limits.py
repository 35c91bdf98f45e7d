"""Limits and defaults shared by the daemon, the stores and the SDK."""

from __future__ import annotations

from typing import Final

MAX_NAME_BYTES: Final = 255
"""Longest topic, queue, message id or NodeId part, in UTF-8 bytes."""

MAX_HEADER_ENTRIES: Final = 64
"""Most headers on one message."""

MAX_HEADER_BYTES: Final = 16 * 1024
"""Largest total size of header keys and values, in UTF-8 bytes."""

DEFAULT_MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""Default largest payload; the daemon's `--max-payload-bytes` changes it."""

ENVELOPE_OVERHEAD_BYTES: Final = 64 * 1024
"""Room for topic, origin, ids and protobuf framing around one message's payload and headers."""

RECEIVE_LIMIT_BYTES: Final = 64 * 1024 * 1024
"""The largest gRPC message the SDK receives by default: every message must fit in one."""

MAX_PAYLOAD_LIMIT: Final = RECEIVE_LIMIT_BYTES - MAX_HEADER_BYTES - ENVELOPE_OVERHEAD_BYTES
"""The largest `--max-payload-bytes`: a message at it, with full headers, still fits in what the
SDK and peers receive."""

MIN_RECEIVE_LIMIT_BYTES: Final = 32 * 1024 * 1024
"""The smallest gRPC receive limit of a daemon, so a PublishBatch of small messages (or a
packed Fetch response) is never refused for its size."""

READ_BUDGET_BYTES: Final = 8 * 1024 * 1024
"""Bytes one read holds: a Fetch or Subscribe chunk, a sync batch. A larger message is read
alone."""


def receive_limit_bytes(max_payload_bytes: int) -> int:
    """The gRPC receive limit of a daemon that accepts payloads up to `max_payload_bytes`.

    The one place it is derived: the daemon's server (clients' requests) and its peer channels
    (peers' Fetch responses) both use it. A peer's message above it fails its Fetch; a smaller
    one above `max_payload_bytes` arrives and is refused by name.
    """
    return max(
        max_payload_bytes + MAX_HEADER_BYTES + ENVELOPE_OVERHEAD_BYTES, MIN_RECEIVE_LIMIT_BYTES
    )


DEFAULT_FETCH_LIMIT: Final = 100
"""Page size used when a Fetch limit or Subscribe replay_limit is 0."""

MAX_FETCH_LIMIT: Final = 10_000
"""Largest page one Fetch returns."""

U64_MAX: Final = 2**64 - 1
"""Largest value of a protobuf uint64."""

MAX_STORED_INT: Final = 2**63 - 1
"""Largest head_id, sequence or timestamp a store keeps; every backend stores signed 64-bit."""

DELETE_TOPIC: Final = "$msgbus.delete"
"""The topic that carries delete markers, one log per origin."""

RESERVED_TOPIC_PREFIX: Final = "$msgbus."
"""Applications cannot write topics with this prefix."""
