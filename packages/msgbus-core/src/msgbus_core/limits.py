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
