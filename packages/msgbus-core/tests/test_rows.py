"""The row codecs every SQL store reads and writes with."""

from __future__ import annotations

import dataclasses

import pytest

from msgbus_core import Message, NodeId
from msgbus_core.rows import new_message

LOCAL = NodeId("tenant", "default", "local")


def test_rows_build_messages_identical_to_the_constructor() -> None:
    args = ("id", "topic", LOCAL, 7, b"payload", {"k": "v"}, 123, True)
    built = new_message(*args)
    assert built == Message(*args)
    assert repr(built) == repr(Message(*args))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.head_id = 8  # type: ignore[misc]
