"""The pattern Subscribe glob syntax: `*` within a segment, a final `>` or `**` for the rest."""

from __future__ import annotations

import pytest

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import NodeId
from msgbus_server.log_pattern import LogPattern, SegmentGlob

DEVICE = NodeId("acme", "bl", "dev1")


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("telemetry", ["telemetry"], ["telemetry.cpu", "telemetryx", "xtelemetry"]),
        ("telemetry.*", ["telemetry.cpu", "telemetry."], ["telemetry", "telemetry.cpu.load"]),
        ("telemetry.>", ["telemetry.cpu", "telemetry.cpu.load"], ["telemetry", "telemetry."]),
        ("telemetry.**", ["telemetry.cpu", "telemetry.a.b.c"], ["telemetry", "other.cpu"]),
        ("*.temp*", ["room1.temperature", "a.temp"], ["room1.humidity", "a.b.temp"]),
        (">", ["a", "a.b.c"], [""]),
        ("a+b.(c)", ["a+b.(c)"], ["aab.c"]),  # regex characters match themselves
    ],
)
def test_topic_globs(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    glob = SegmentGlob.parse("topic_pattern", pattern, ".")
    assert [t for t in matching if glob.matches(t)] == matching
    assert [t for t in not_matching if glob.matches(t)] == []


@pytest.mark.parametrize(
    "pattern", ["a..b", ".a", "a.", "a.>.b", "a.**.b", "a.b>", "a.x**", "  ", "a\x00b"]
)
def test_invalid_globs_name_the_field(pattern: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        SegmentGlob.parse("topic_pattern", pattern, ".")
    assert caught.value.field == "topic_pattern"


def test_origin_pattern_and_listing_bounds() -> None:
    pattern = LogPattern.parse("tele.*", "acme/*/*")
    assert pattern.matches("tele.cpu", DEVICE)
    assert not pattern.matches("tele.cpu", NodeId("globex", "bl", "dev1"))
    assert LogPattern.parse("tele.*", "").matches("tele.cpu", NodeId("x", "y", "z"))
    # A listing by topic starts just before "tele." and stops past every topic starting so.
    assert pattern.listing_start() == ("tele.", "")
    assert not pattern.past_listing("tele.zzz")
    assert pattern.past_listing("telf")
    assert LogPattern.parse("*.cpu", "").listing_start() is None
    with pytest.raises(InvalidArgumentError) as caught:
        LogPattern.parse("tele.*", "acme/>/x")
    assert caught.value.field == "origin_pattern"
