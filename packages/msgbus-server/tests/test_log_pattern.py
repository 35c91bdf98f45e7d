"""Pattern Subscribe's globs: the shared topic-glob rule, plus the subscription's listing bounds."""

from __future__ import annotations

import pytest

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import NodeId
from msgbus_server.log_pattern import LogPattern
from msgbus_server.retention_rules import parse_retention

DEVICE = NodeId("acme", "bl", "dev1")


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("telemetry", ["telemetry"], ["telemetry.cpu", "telemetryx", "xtelemetry"]),
        (
            "telemetry.*",
            ["telemetry.cpu", "telemetry.", "telemetry.cpu.load"],
            ["telemetry", "Telemetry.cpu"],
        ),
        ("*.temp*", ["room1.temperature", "a.temp", "a.b.temp"], ["room1.humidity"]),
        ("room?.temp", ["room1.temp"], ["room.temp", "room12.temp"]),
        ("room[0-9].temp", ["room1.temp"], ["roomx.temp"]),
        ("*", ["a", "a.b.c"], []),
        ("a+b.(c)", ["a+b.(c)"], ["aab.c"]),  # regex characters match themselves
        ("a.>", ["a.>"], ["a.b"]),  # `>` has no meaning: it matches itself
    ],
)
def test_topic_patterns(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    log_pattern = LogPattern.parse(pattern, "")
    assert [t for t in matching if log_pattern.matches(t, DEVICE)] == matching
    assert [t for t in not_matching if log_pattern.matches(t, DEVICE)] == []


def test_a_subscription_and_a_retention_rule_read_a_glob_alike() -> None:
    """`telemetry.*` covers the same topics in a subscription as in `--retention`."""
    rule = parse_retention("telemetry.*:max-messages=5")
    subscription = LogPattern.parse("telemetry.*", "")
    for topic in ("telemetry.cpu", "telemetry.cpu.load", "telemetry", "telemetryx.cpu"):
        assert subscription.matches(topic, DEVICE) == rule.matches(topic), topic
    assert subscription.matches("telemetry.cpu.load", DEVICE)


@pytest.mark.parametrize("pattern", ["", "  ", "a\x00b", "a\x1fb", "t.[x", "x" * 256])
def test_invalid_patterns_name_the_field(pattern: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        LogPattern.parse(pattern, "")
    assert caught.value.field == "topic_pattern"


def test_origin_pattern_and_listing_bounds() -> None:
    pattern = LogPattern.parse("tele.*", "acme/*")
    assert pattern.matches("tele.cpu", DEVICE)
    assert not pattern.matches("tele.cpu", NodeId("globex", "bl", "dev1"))
    assert LogPattern.parse("tele.*", "").matches("tele.cpu", NodeId("x", "y", "z"))
    # A listing by topic starts just before "tele." and stops past every topic starting so.
    assert pattern.listing_start() == ("tele.", "")
    assert not pattern.past_listing("tele.zzz")
    assert pattern.past_listing("telf")
    assert LogPattern.parse("*.cpu", "").listing_start() is None
    assert LogPattern.parse("te?e.*", "").listing_start() == ("te", "")
    assert LogPattern.parse("tele[mx]", "").listing_start() == ("tele", "")
    with pytest.raises(InvalidArgumentError) as caught:
        LogPattern.parse("tele.*", "acme/[bl/x")
    assert caught.value.field == "origin_pattern"
