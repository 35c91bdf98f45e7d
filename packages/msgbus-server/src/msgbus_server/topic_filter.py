"""Partial replication: which logs one peer or upstream exchanges, by topic glob.

`--push-topics` and `--pull-topics` (and `;push=...;pull=...` on one `--peer` or `--upstream`,
see `peers.parse_peer_spec`) take comma-separated topic globs with the rule of every glob in msgbus
(`msgbus_server.topic_globs`: `*` matches any text, dots included, `?` one character, `[...]`
a set). An empty list matches every topic: the defaults push every log this
node holds and pull everything.

A log's delete markers (`$msgbus.delete` of its origin) travel with the logs they delete, so
the marker log always matches a filter that matches anything: without it, deleted copies could
never be taken (they are accepted only with their origin's marker held).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.limits import DELETE_TOPIC
from msgbus_server.topic_globs import TopicGlob, compile_glob, validate_glob

__all__ = ["EVERY_TOPIC", "TopicFilter", "parse_topic_globs"]


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A list of topic globs; empty matches every topic."""

    globs: tuple[str, ...] = ()
    _compiled: tuple[TopicGlob, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        compiled = tuple(compile_glob(glob) for glob in self.globs)
        object.__setattr__(self, "_compiled", compiled)

    @property
    def everything(self) -> bool:
        """True when no glob narrows it (every topic matches)."""
        return not self.globs

    def matches(self, topic: str) -> bool:
        """Whether the log of `topic` is exchanged (delete markers always are)."""
        if not self._compiled or topic == DELETE_TOPIC:
            return True
        return any(glob.matches(topic) for glob in self._compiled)

    def __str__(self) -> str:
        return ",".join(self.globs) if self.globs else "*"


EVERY_TOPIC = TopicFilter()
"""The default filter: every topic."""


def parse_topic_globs(text: str, what: str) -> TopicFilter:
    """A filter from comma-separated globs; raise `ValueError` naming `what` for a bad glob.

    A glob is bad when it is empty or the glob rule refuses it (`topic_globs.validate_glob`).
    `"*"` alone, like an empty text, matches everything.
    """
    globs = tuple(part.strip() for part in text.split(","))
    if not text.strip():
        return EVERY_TOPIC
    if any(not glob for glob in globs):
        raise ValueError(f"{what} {text!r} has an empty topic glob (write globs like a.*,b.c)")
    for glob in globs:
        try:
            validate_glob("a topic glob", glob)
        except InvalidArgumentError as refused:
            raise ValueError(f"{what} {text!r}: {refused}") from None
    if globs == ("*",):
        return EVERY_TOPIC
    return TopicFilter(globs)
