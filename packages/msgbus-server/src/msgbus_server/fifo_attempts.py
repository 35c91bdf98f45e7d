"""`--fifo-max-attempts`: how many failed attempts a FIFO queue allows, by queue glob.

A rule is written `PATTERN=N`, as in `--fifo-max-attempts 'jobs.*=5'` (repeatable; in the
configuration file `fifo-max-attempts = ["jobs.*=5"]` or a `[fifo-max-attempts]` table of
`"jobs.*" = 5`). PATTERN is a queue glob (`msgbus_server.topic_globs`, the rule of every glob)
and the first matching pattern applies. A queue no rule
matches has no limit (0): its messages are redelivered forever, as the original's were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.fifo_leases import MAX_ATTEMPTS
from msgbus_core.limits import MAX_NAME_BYTES
from msgbus_server.topic_globs import glob_matches, validate_glob

MAX_QUEUE_BYTES_WITH_DEAD: Final = MAX_NAME_BYTES - len(".dead")
"""The longest queue name whose dead-letter queue `QUEUE.dead` is itself a valid name."""
RULE_CACHE_QUEUES: Final = 4_096
"""Queues whose max_attempts the rules remember; the memo starts over when full."""


@dataclass(frozen=True, slots=True)
class MaxAttemptsRule:
    """`PATTERN=N`: the queues whose name matches the glob PATTERN allow N failed attempts."""

    pattern: str
    """A queue glob (`msgbus_server.topic_globs`: `*` matches any text, dots included)."""
    max_attempts: int

    def __str__(self) -> str:
        return f"{self.pattern}={self.max_attempts}"


@dataclass(frozen=True, slots=True)
class MaxAttempts:
    """The `--fifo-max-attempts` rules in order: the first matching pattern applies.

    A queue no rule matches has no limit (0). A dead-letter queue is never dead-lettered, and
    a queue whose `QUEUE.dead` would be longer than a queue name may be is not either.
    """

    rules: tuple[MaxAttemptsRule, ...] = ()
    _matched: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def for_queue(self, queue: str) -> int:
        """The max_attempts of `queue` (0: unlimited)."""
        cached = self._matched.get(queue)
        if cached is not None:
            return cached
        limit = next((r.max_attempts for r in self.rules if glob_matches(queue, r.pattern)), 0)
        if len(queue.encode("utf-8", "surrogatepass")) > MAX_QUEUE_BYTES_WITH_DEAD:
            limit = 0
        if len(self._matched) >= RULE_CACHE_QUEUES:
            self._matched.clear()
        self._matched[queue] = limit
        return limit


def parse_max_attempts(text: str, where: str = "--fifo-max-attempts") -> MaxAttemptsRule:
    """Parse `PATTERN=N` (split on the last `=`); `ValueError` naming `where` if it is not one.

    N is a whole number from 1 to 4,294,967,295 (attempts are a uint32 on the wire).
    """
    pattern, equals, number = text.rpartition("=")
    pattern, number = pattern.strip(), number.strip()
    if not equals or not pattern:
        raise ValueError(f"{where} {text!r}: expected PATTERN=N, e.g. 'jobs.*=5'")
    try:
        validate_glob("the pattern", pattern)
    except InvalidArgumentError as refused:
        raise ValueError(f"{where} {text!r}: {refused}") from None
    digits = number.isascii() and number.isdigit() and len(number) <= 10
    if not digits or not 1 <= int(number) <= MAX_ATTEMPTS:
        raise ValueError(
            f"{where} {text!r}: max attempts must be a whole number from 1 to 4294967295"
        )
    return MaxAttemptsRule(pattern, int(number))


def max_attempts_of(specs: Sequence[str | MaxAttemptsRule]) -> MaxAttempts:
    """The rules of `--fifo-max-attempts` specs; `ValueError` for a bad or repeated one."""
    rules = tuple(
        spec if isinstance(spec, MaxAttemptsRule) else parse_max_attempts(str(spec))
        for spec in specs
    )
    patterns = [rule.pattern for rule in rules]
    repeated = next((p for p in patterns if patterns.count(p) > 1), None)
    if repeated is not None:
        raise ValueError(
            f"--fifo-max-attempts: the pattern {repeated!r} is given twice (give each pattern "
            "once; the first matching pattern applies)"
        )
    return MaxAttempts(rules)


__all__ = [
    "MAX_QUEUE_BYTES_WITH_DEAD",
    "MaxAttempts",
    "MaxAttemptsRule",
    "max_attempts_of",
    "parse_max_attempts",
]
