"""Which logs a pattern Subscribe follows: a segment glob over topics and one over origins.

The contract (`SubscribeRequest.topic_pattern`) defines the syntax: a pattern is split into
segments at the separator (`.` for topics, `/` for the origin key `tenant/bl/device`);

- `*` inside a segment matches any text within that one segment (`telemetry.*` matches
  `telemetry.cpu` but not `telemetry.cpu.load`; `temp*` matches `temperature`);
- `>` or `**` as the whole LAST segment matches one or more further segments
  (`telemetry.>` matches `telemetry.cpu` and `telemetry.cpu.load`, not `telemetry`);
- every other character matches itself.

This differs on purpose from the policy's and retention's `fnmatch` globs, where `*` crosses
dots: a subscription names a subtree of topics, as NATS subjects do. A pattern that cannot
match sensibly (an empty segment, `>` or `**` before the end or inside a segment) is refused
with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import NodeId
from msgbus_core.validation import validate_name

__all__ = ["LogPattern", "SegmentGlob"]

_REST: Final = frozenset({">", "**"})
"""Segments that match the rest of the name (only as the last segment)."""


@dataclass(frozen=True, slots=True)
class SegmentGlob:
    """One compiled segment glob; `matches` is a single regex match."""

    text: str
    _regex: re.Pattern[str]

    @classmethod
    def parse(cls, field: str, text: str, separator: str) -> SegmentGlob:
        """Compile `text`; INVALID_ARGUMENT naming `field` when it is not a valid glob."""
        validate_name(field, text)
        segments = text.split(separator)
        parts: list[str] = []
        for index, segment in enumerate(segments):
            last = index == len(segments) - 1
            if not segment:
                raise InvalidArgumentError(
                    f"{field} {text!r} has an empty segment: segments are separated by "
                    f"one {separator!r}",
                    field=field,
                )
            if segment in _REST:
                if not last:
                    raise InvalidArgumentError(
                        f"{field} {text!r} uses {segment!r} before its last segment: it "
                        "matches the rest of the name, so it may only end the pattern",
                        field=field,
                    )
                parts.append(f"[^{re.escape(separator)}].*")
                continue
            if ">" in segment or "**" in segment:
                raise InvalidArgumentError(
                    f"{field} {text!r} has {segment!r}: '>' and '**' must be a whole "
                    "segment of their own, at the end",
                    field=field,
                )
            within = f"[^{re.escape(separator)}]*"
            parts.append(within.join(re.escape(piece) for piece in segment.split("*")))
        regex = re.compile(re.escape(separator).join(parts) + r"\Z", re.DOTALL)
        return cls(text, regex)

    def matches(self, name: str) -> bool:
        """True when `name` matches the whole glob."""
        return self._regex.match(name) is not None


@dataclass(frozen=True, slots=True)
class LogPattern:
    """The logs one pattern subscription follows: a topic glob and an optional origin glob."""

    topics: SegmentGlob
    origins: SegmentGlob | None
    """None matches every origin."""

    @classmethod
    def parse(cls, topic_pattern: str, origin_pattern: str) -> LogPattern:
        """The request's patterns, validated (errors name topic_pattern or origin_pattern)."""
        topics = SegmentGlob.parse("topic_pattern", topic_pattern, ".")
        origins = (
            SegmentGlob.parse("origin_pattern", origin_pattern, "/") if origin_pattern else None
        )
        return cls(topics, origins)

    @property
    def topic_prefix(self) -> str:
        """The literal text every matching topic starts with (up to the first wildcard)."""
        text = self.topics.text
        cut = min((i for i in (text.find("*"), text.find(">")) if i >= 0), default=len(text))
        return text[:cut]

    def listing_start(self) -> tuple[str, str] | None:
        """Where a listing by (topic, origin key) can start: just before the first match."""
        prefix = self.topic_prefix
        # Origin keys are never empty, so (prefix, "") sorts before every log of `prefix`.
        return (prefix, "") if prefix else None

    def past_listing(self, topic: str) -> bool:
        """True once a listing by topic has passed every topic that can match."""
        prefix = self.topic_prefix
        return topic > prefix and not topic.startswith(prefix)

    def matches(self, topic: str, origin: NodeId) -> bool:
        """True when the log (topic, origin) is one the subscription follows."""
        if not self.topics.matches(topic):
            return False
        return self.origins is None or self.origins.matches(origin.key)
