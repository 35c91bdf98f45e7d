"""Which logs a pattern Subscribe follows: a glob over topics and one over origins.

`SubscribeRequest.topic_pattern` is a topic glob and `origin_pattern` a glob over the origin
key `tenant/bl/device`, both with the rule of every glob in msgbus (`msgbus_server.topic_globs`,
as in retention rules, policies and `--push-topics`): `*` matches any text, dots and slashes
included (`telemetry.*` matches `telemetry.cpu` and `telemetry.cpu.load`), `?` one character,
`[...]` a set. A glob that rule refuses (empty, over 255 bytes, a control character, a `[` that
no `]` closes) is INVALID_ARGUMENT naming the field.

What is this module's own is the subscription's view of the store: a listing by topic can
start at the topic glob's literal prefix and stop once past every topic that starts with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from msgbus_core.model import NodeId
from msgbus_server.topic_globs import TopicGlob, validate_glob

__all__ = ["LogPattern"]


@dataclass(frozen=True, slots=True)
class LogPattern:
    """The logs one pattern subscription follows: a topic glob and an optional origin glob."""

    topics: TopicGlob
    origins: TopicGlob | None
    """None matches every origin."""

    @classmethod
    def parse(cls, topic_pattern: str, origin_pattern: str) -> LogPattern:
        """The request's patterns, validated (errors name topic_pattern or origin_pattern)."""
        topics = validate_glob("topic_pattern", topic_pattern)
        origins = validate_glob("origin_pattern", origin_pattern) if origin_pattern else None
        return cls(topics, origins)

    @property
    def topic_prefix(self) -> str:
        """The literal text every matching topic starts with (up to the first wildcard)."""
        return self.topics.literal_prefix

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
