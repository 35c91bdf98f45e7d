"""The one topic-glob rule, and that every part of the daemon that takes a glob reads it alike."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import NodeId
from msgbus_server.config import ConfigError
from msgbus_server.fifo_attempts import max_attempts_of, parse_max_attempts
from msgbus_server.identity import Caller
from msgbus_server.log_pattern import LogPattern
from msgbus_server.policy import LogRef, QueueRef, policy_from_table
from msgbus_server.retention_rules import parse_retention, rule_from_table
from msgbus_server.topic_filter import parse_topic_globs
from msgbus_server.topic_globs import (
    GLOB_CACHE_SIZE,
    compile_glob,
    escape_glob,
    glob_matches,
    literal_prefix,
    validate_glob,
)

NODE = NodeId("acme", "bl", "dev1")
CALLER = Caller(node=NODE)

GLOBS = ["telemetry.*", "*.cpu", "room?.t", "room[0-9].t", "room[!0-9].t", "[]x]y", "a[*]b", "x"]
NAMES = [
    "telemetry.cpu",
    "telemetry.cpu.load",
    "telemetry",
    "Telemetry.cpu",
    "a/b.cpu",
    "room1.t",
    "roomx.t",
    "room12.t",
    "]y",
    "xy",
    "a*b",
    "axb",
    "x",
]


@pytest.mark.parametrize(
    ("glob", "name", "expected"),
    [
        ("telemetry.*", "telemetry.cpu.load", True),  # `*` crosses dots
        ("acme/*", "acme/bl/dev1", True),  # and slashes
        ("telemetry.*", "telemetry", False),
        ("telemetry.*", "Telemetry.cpu", False),  # case-sensitive
        ("room?.t", "room12.t", False),
        ("room[0-9].t", "room1.t", True),
        ("room[!0-9].t", "room1.t", False),
        ("[]x]y", "]y", True),  # a `]` first in a set is a member
        ("a.>", "a.b", False),  # `>` is no wildcard
        ("a\nb", "a\nb", True),  # `*`-free text matches only itself, whatever it holds
    ],
)
def test_the_rule(glob: str, name: str, expected: bool) -> None:
    assert glob_matches(name, glob) is expected


def test_every_user_of_globs_agrees() -> None:
    """Retention, policy, FIFO max-attempts, partial replication and pattern Subscribe."""
    for glob in GLOBS:
        rule = parse_retention(f"{glob}:max-messages=1")
        attempts = max_attempts_of([f"{glob}=3"])
        topic_filter = parse_topic_globs(glob, "--push-topics")
        subscription = LogPattern.parse(glob, glob)
        policy = policy_from_table(
            tomllib.loads(
                "[[rule]]\ncallers = ['*']\nallow = ['read', 'fifo']\n"
                f"topics = [{glob!r}]\nqueues = [{glob!r}]\n"
            ),
            base=Path("."),
            source="test.toml",
        )
        for name in NAMES:
            expected = glob_matches(name, glob)
            assert rule.matches(name) is expected, (glob, name)
            assert (attempts.for_queue(name) == 3) is expected, (glob, name)
            assert topic_filter.matches(name) is expected, (glob, name)
            assert subscription.topics.matches(name) is expected, (glob, name)
            read = policy.decide(CALLER, frozenset({"read"}), LogRef(name, NODE)).allowed
            fifo = policy.decide(CALLER, frozenset({"fifo"}), QueueRef(name)).allowed
            assert read is expected, (glob, name)
            assert fifo is expected, (glob, name)


@pytest.mark.parametrize(
    ("glob", "problem"),
    [
        ("", "topic_pattern is empty"),
        ("   ", "topic_pattern is empty"),
        ("x" * 256, "topic_pattern is 256 bytes; the limit is 255 UTF-8 bytes"),
        ("a\x00b", "topic_pattern contains a NUL byte"),
        ("a\x7fb", "topic_pattern contains a control character U+007F"),
        ("t.[x", "topic_pattern 't.[x' has a '[' at offset 2 that no ']' closes"),
        ("[]", "topic_pattern '[]' has a '[' at offset 0 that no ']' closes"),
        ("[ok]x[", "topic_pattern '[ok]x[' has a '[' at offset 5 that no ']' closes"),
    ],
)
def test_malformed_globs_are_refused_naming_the_field(glob: str, problem: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_glob("topic_pattern", glob)
    assert caught.value.field == "topic_pattern"
    assert str(caught.value).startswith(problem)


def test_the_longest_glob_is_accepted() -> None:
    assert validate_glob("topic_pattern", "x" * 254 + "*").matches("x" * 300)


@pytest.mark.parametrize(
    ("configure", "setting"),
    [
        (lambda: parse_retention("t.[x:max-messages=1"), "--retention 't.[x:max-messages=1'"),
        (lambda: rule_from_table("t.[x", {"max-messages": 1}, 'retention."t.[x"'), "retention"),
        (lambda: parse_max_attempts("t.[x=3"), "--fifo-max-attempts 't.[x=3'"),
        (lambda: parse_topic_globs("a.*,t.[x", "--push-topics"), "--push-topics 'a.*,t.[x'"),
        (
            lambda: policy_from_table(
                {"rule": [{"callers": ["*"], "allow": ["read"], "topics": ["t.[x"]}]},
                Path("."),
                "test.toml",
            ),
            "test.toml: policy.rule[0].topics[0]",
        ),
    ],
)
def test_configured_globs_are_checked_by_the_same_rule(configure: object, setting: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as caught:
        configure()  # type: ignore[operator]
    message = str(caught.value)
    assert message.startswith(setting), message
    assert "that no ']' closes" in message
    assert "\n" not in message


def test_literal_prefix_and_escape() -> None:
    assert literal_prefix("telemetry.*") == "telemetry."
    assert literal_prefix("te?e") == "te"
    assert literal_prefix("a[bc]") == "a"
    assert literal_prefix("plain") == "plain"
    assert literal_prefix("*x") == ""
    for value in ("dev*1", "a?b", "x[1]", "plain"):
        escaped = escape_glob(value)
        assert glob_matches(value, escaped)
        assert not glob_matches(value + "x", escaped)
    assert not glob_matches("devX1", escape_glob("dev*1"))


def test_the_compiled_glob_cache_is_bounded() -> None:
    compile_glob.cache_clear()
    for index in range(GLOB_CACHE_SIZE * 3):
        assert glob_matches(f"t{index}.x", f"t{index}.*")
    assert compile_glob.cache_info().currsize == GLOB_CACHE_SIZE
