"""Every limit of DESIGN.md section 5, with an error that names the field and the limit."""

import pytest

from msgbus_core import InvalidArgumentError, PermissionDeniedError
from msgbus_core.limits import MAX_HEADER_BYTES, MAX_HEADER_ENTRIES, U64_MAX
from msgbus_core.validation import (
    clamp_stored,
    ensure_application_topic,
    validate_headers,
    validate_name,
    validate_payload,
    validate_u64,
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "topic is empty"),
        ("   ", "topic is empty"),
        ("a\0b", "topic contains a NUL byte"),
        ("a\nb", "topic contains a control character U\\+000A"),
        ("x" * 256, "topic is 256 bytes; the limit is 255 UTF-8 bytes"),
        ("é" * 128, "topic is 256 bytes"),
        ("\ud800", "topic is not valid UTF-8"),
    ],
)
def test_bad_names_are_rejected_with_the_field_and_limit(value: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        validate_name("topic", value)


def test_names_are_kept_exactly() -> None:
    assert validate_name("topic", " events ") == " events "
    assert validate_name("topic", "x" * 255) == "x" * 255


def test_reserved_prefix_is_refused_for_writes() -> None:
    with pytest.raises(PermissionDeniedError, match=r"\$msgbus\."):
        ensure_application_topic("$msgbus.anything")
    ensure_application_topic("msgbus.ok")


def test_payload_limit() -> None:
    assert validate_payload(b"x" * 10, 10) == b"x" * 10
    with pytest.raises(InvalidArgumentError, match="payload is 11 bytes; the limit is 10 bytes"):
        validate_payload(b"x" * 11, 10)


def test_header_limits() -> None:
    validate_headers({f"k{i}": "v" for i in range(MAX_HEADER_ENTRIES)})
    with pytest.raises(InvalidArgumentError, match="headers has 65 entries; the limit is 64"):
        validate_headers({f"k{i}": "v" for i in range(MAX_HEADER_ENTRIES + 1)})
    with pytest.raises(InvalidArgumentError, match=f"the limit is {MAX_HEADER_BYTES} bytes"):
        validate_headers({"k": "v" * MAX_HEADER_BYTES})
    with pytest.raises(InvalidArgumentError, match="headers key is empty"):
        validate_headers({"": "v"})


def test_u64_bounds() -> None:
    assert validate_u64("head_id", U64_MAX) == U64_MAX
    with pytest.raises(InvalidArgumentError, match="head_id must be between 0 and"):
        validate_u64("head_id", U64_MAX + 1)
    assert clamp_stored(U64_MAX) == 2**63 - 1
