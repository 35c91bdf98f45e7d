"""Validation of everything a client or a peer sends.

Each function raises `InvalidArgumentError` whose message names the field and the limit, so the
client learns what to fix, and whose `field` attribute is that field's name. Nothing here
touches a store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from msgbus_core.errors import InvalidArgumentError, PermissionDeniedError
from msgbus_core.limits import (
    MAX_HEADER_BYTES,
    MAX_HEADER_ENTRIES,
    MAX_NAME_BYTES,
    MAX_STORED_INT,
    RESERVED_TOPIC_PREFIX,
    U64_MAX,
)

# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; a regex finds one far faster
# than a per-character unicodedata lookup, and names are checked on every publish.
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


def validate_name(field: str, value: str) -> str:
    """Check a topic, queue, message id or NodeId part and return it unchanged.

    A name is non-empty after trimming, at most 255 UTF-8 bytes, and has no control characters
    (NUL included). Names are stored exactly as given: no trimming, no normalisation.
    """
    if not value.strip():
        raise InvalidArgumentError(f"{field} is empty", field=field)
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{field} is not valid UTF-8", field=field) from None
    if size > MAX_NAME_BYTES:
        raise InvalidArgumentError(
            f"{field} is {size} bytes; the limit is {MAX_NAME_BYTES} UTF-8 bytes", field=field
        )
    bad = _CONTROL_CHARACTER.search(value)
    if bad is not None:
        char = bad.group()
        what = "NUL byte" if char == "\0" else f"control character U+{ord(char):04X}"
        raise InvalidArgumentError(f"{field} contains a {what}", field=field)
    return value


def validate_node_part(field: str, value: str) -> str:
    """Check one NodeId part: a name that also has no `/`, because node keys join parts with it."""
    validate_name(field, value)
    if "/" in value:
        raise InvalidArgumentError(
            f"{field} contains '/', which node keys reserve as separator", field=field
        )
    return value


def validate_topic(value: str, field: str = "topic") -> str:
    """Check a topic name (reading is allowed on reserved topics)."""
    return validate_name(field, value)


def ensure_application_topic(topic: str, field: str = "topic") -> None:
    """Refuse writes to reserved `$msgbus.` topics."""
    if topic.startswith(RESERVED_TOPIC_PREFIX):
        raise PermissionDeniedError(
            f"{field} {topic!r} is reserved: topics starting with "
            f"{RESERVED_TOPIC_PREFIX!r} are written by msgbusd only",
            field=field,
        )


def validate_payload(payload: bytes, max_bytes: int, field: str = "payload") -> bytes:
    """Check the payload size against the daemon's limit."""
    if len(payload) > max_bytes:
        raise InvalidArgumentError(
            f"{field} is {len(payload)} bytes; the limit is {max_bytes} bytes", field=field
        )
    return payload


def validate_headers(headers: Mapping[str, str], field: str = "headers") -> dict[str, str]:
    """Check the number and total size of headers; keys must also be valid names."""
    if len(headers) > MAX_HEADER_ENTRIES:
        raise InvalidArgumentError(
            f"{field} has {len(headers)} entries; the limit is {MAX_HEADER_ENTRIES}", field=field
        )
    total = 0
    for key, value in headers.items():
        try:
            validate_name(f"{field} key", key)
        except InvalidArgumentError as error:
            # The message says "headers key"; the field is the headers map itself.
            raise InvalidArgumentError(str(error), field=field) from None
        if "\0" in value:
            raise InvalidArgumentError(f"{field}[{key!r}] contains a NUL byte", field=field)
        try:
            total += len(key.encode("utf-8")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgumentError(
                f"{field}[{key!r}] is not valid UTF-8", field=field
            ) from None
    if total > MAX_HEADER_BYTES:
        raise InvalidArgumentError(
            f"{field} total {total} bytes; the limit is {MAX_HEADER_BYTES} bytes", field=field
        )
    return dict(headers)


def validate_u64(field: str, value: int) -> int:
    """Check that a value fits a protobuf uint64."""
    if not 0 <= value <= U64_MAX:
        raise InvalidArgumentError(
            f"{field} must be between 0 and {U64_MAX}, got {value}", field=field
        )
    return value


def validate_stored_int(field: str, value: int) -> int:
    """Check a value that a store keeps: stores hold signed 64-bit integers."""
    if not 0 <= value <= MAX_STORED_INT:
        raise InvalidArgumentError(
            f"{field} must be between 0 and {MAX_STORED_INT}, got {value}", field=field
        )
    return value


def clamp_stored(value: int) -> int:
    """Clamp a u64 read bound into the range a store can hold (reads never fail on range)."""
    return min(max(value, 0), MAX_STORED_INT)
