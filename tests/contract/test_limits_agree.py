"""Limits that two layers state separately, because the SDK may not import the daemon's core."""

from __future__ import annotations

from msgbus_core import limits
from msgbus_sdk import _config


def test_the_sdk_receives_what_the_daemon_caps_payloads_for() -> None:
    # msgbusd caps --max-payload-bytes so that a message fits in what the SDK receives by
    # default; the two figures must stay one.
    assert _config.DEFAULT_MAX_RECEIVE_BYTES == limits.RECEIVE_LIMIT_BYTES
    largest = limits.MAX_PAYLOAD_LIMIT + limits.MAX_HEADER_BYTES + limits.ENVELOPE_OVERHEAD_BYTES
    assert largest <= _config.DEFAULT_MAX_RECEIVE_BYTES
