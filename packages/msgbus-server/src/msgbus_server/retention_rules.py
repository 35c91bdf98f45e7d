"""Retention rules: how much of each log msgbusd keeps, chosen by topic pattern.

A rule is written `PATTERN:RULES`, as in `--retention 'telemetry.*:max-age=7d,max-bytes=1GiB'`:
PATTERN is a topic glob (`msgbus_server.topic_globs`: `*` crosses dots) and RULES are
comma-separated limits. A policy is an ordered list of rules in which the first matching pattern
applies, to each log separately: `telemetry.a` and `telemetry.b` each keep up to the limits.

Every parse error is a `ConfigError` of one line that names the setting, the bad part and what is
allowed; the file form (`[retention."telemetry.*"]` tables) reuses the same value checks through
`rule_from_table`, so a limit is checked in one place whichever way it is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.limits import MAX_STORED_INT
from msgbus_server.topic_globs import compile_glob, validate_glob

if TYPE_CHECKING:
    from msgbus_server.config import ConfigError

DISCARD_POLICIES: Final = ("old", "new")
"""What `--discard` does at the disk budget: trim the oldest messages, or refuse new writes."""

RULE_NAMES: Final = ("max-messages", "max-age", "max-bytes")
"""The limits a rule may set, in the order the canonical text writes them."""

MIN_MAX_AGE_MS: Final = 1000
"""The shortest max-age: trimming runs in the background, so finer ages would not be kept."""

POLICY_CACHE_TOPICS: Final = 4096
"""Topics whose matching rule a policy remembers; the memo is cleared when it is full, so a
daemon with millions of topics holds a bounded map, and the common few-topic case never
re-matches."""

_SIZE_UNITS: Final = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_SPELLING: Final = {
    "b": "B",
    "kb": "kB",
    "mb": "MB",
    "gb": "GB",
    "tb": "TB",
    "kib": "KiB",
    "mib": "MiB",
    "gib": "GiB",
    "tib": "TiB",
}
_DURATION_UNITS: Final = {
    "ms": 1,
    "s": 1000,
    "m": 60 * 1000,
    "h": 3600 * 1000,
    "d": 86400 * 1000,
    "w": 7 * 86400 * 1000,
}
# Canonical text stops at days: operators say "7d" and "30d", not "1w" and "4w2d".
_DURATION_SHOWN: Final = ("d", "h", "m", "s", "ms")

# At most 19 integer digits (2**63-1 has 19) and 18 decimals: longer numbers are either out of
# range or noise, and Python refuses to convert integers of thousands of digits.
_NUMBER: Final = re.compile(r"(\d+)(?:\.(\d{1,18}))?\s*([A-Za-z]*)")
_MAX_DIGITS: Final = 19

_SIZE_ALLOWED: Final = (
    "use a whole number of bytes or a number with B, kB, MB, GB, TB, KiB, MiB, GiB or TiB, "
    "e.g. 500MiB, 2GiB"
)
_DURATION_ALLOWED: Final = "use a number with ms, s, m, h, d or w, e.g. 90s, 12h, 7d"
_RULES_ALLOWED: Final = "max-messages=N, max-age=DURATION, max-bytes=SIZE"
_EXAMPLE: Final = "'telemetry.*:max-age=7d,max-bytes=1GiB'"


def _config_error(message: str) -> ConfigError:
    # config.py imports this module for DaemonConfig's fields, so the error class is looked up
    # when an error is raised: a top-level import would be a cycle.
    from msgbus_server.config import ConfigError

    return ConfigError(message)


class _Refused(Exception):
    """A refused value: what is wrong and what is allowed, phrased by the caller around a name.

    A flag says `invalid duration '7x' for max-age (use ...)`, a file key path says
    `retention."x".max-age: invalid duration '7x' (use ...)`.
    """

    def __init__(self, problem: str, allowed: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.allowed = allowed

    def about(self, what: str) -> str:
        return f"{self.problem} for {what} ({self.allowed})"

    def at(self, where: str) -> str:
        return f"{where}: {self.problem} ({self.allowed})"


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """The limits of the logs whose topic matches `pattern`; None means no limit of that kind.

    A log is trimmed, oldest messages first, until it holds at most `max_messages` messages, none
    older than `max_age_ms` and at most `max_bytes` bytes.
    """

    pattern: str
    """Topic glob (`msgbus_server.topic_globs`): `*` matches any text, dots included."""
    max_messages: int | None = None
    max_age_ms: int | None = None
    max_bytes: int | None = None

    def matches(self, topic: str) -> bool:
        """Whether this rule's pattern covers `topic` (case-sensitive, `*` crosses dots)."""
        return compile_glob(self.pattern).matches(topic)

    def __str__(self) -> str:
        """The canonical text, which `parse_retention` reads back to an equal rule."""
        limits = []
        if self.max_messages is not None:
            limits.append(f"max-messages={self.max_messages}")
        if self.max_age_ms is not None:
            limits.append(f"max-age={_format_duration(self.max_age_ms)}")
        if self.max_bytes is not None:
            limits.append(f"max-bytes={_format_size(self.max_bytes)}")
        return f"{self.pattern}:{','.join(limits)}"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Retention rules in order: the first rule whose pattern matches a topic is its rule.

    Raises `ConfigError` when two rules have the same pattern: the second could never apply.
    """

    rules: tuple[RetentionRule, ...] = ()
    _matched: dict[str, RetentionRule | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.pattern in seen:
                raise _config_error(
                    f"the pattern {rule.pattern!r} is given twice (give each pattern once; "
                    "the first matching pattern applies)"
                )
            seen.add(rule.pattern)

    def rule_for(self, topic: str) -> RetentionRule | None:
        """The first rule whose pattern matches `topic`, or None: that log is kept whole."""
        try:
            return self._matched[topic]
        except KeyError:
            pass
        rule = next((rule for rule in self.rules if rule.matches(topic)), None)
        # Clearing a full memo rather than evicting keeps this a plain dict; a lost entry costs
        # one re-match, so concurrent callers may race here harmlessly.
        if len(self._matched) >= POLICY_CACHE_TOPICS:
            self._matched.clear()
        self._matched[topic] = rule
        return rule

    def __bool__(self) -> bool:
        """Whether there is any rule; an empty policy keeps every log whole."""
        return bool(self.rules)


def parse_retention(text: str) -> RetentionRule:
    """Parse `PATTERN:RULES`, split on the last `:` (topics, so patterns, may contain colons).

    Whitespace around the pattern, the rules and their values is formatting and is dropped (a
    pattern can still match such a topic with `?` or `[ ]`). Raises `ConfigError` naming
    `--retention` and the spec: an empty pattern, no rules, a rule without `=`, an unknown or
    repeated rule name, or a bad value.
    """
    where = f"--retention {text!r}"
    pattern, colon, rules_text = text.rpartition(":")
    pattern = pattern.strip()
    if not colon:
        raise _config_error(f"{where}: expected PATTERN:RULES, e.g. {_EXAMPLE}")
    if not pattern:
        raise _config_error(
            f"{where}: the pattern is empty (use a topic glob such as telemetry.* or *)"
        )
    _check_pattern(where, pattern)
    limits: dict[str, int] = {}
    for part in rules_text.split(","):
        name, equals, value = (piece.strip() for piece in part.partition("="))
        if not name and not equals:
            continue  # 'x:max-age=7d,' or an empty RULES, reported below
        if not equals or not value:
            raise _config_error(
                f"{where}: rule {part.strip()!r} has no value (write name=value, e.g. max-age=7d)"
            )
        if name not in RULE_NAMES:
            raise _config_error(f"{where}: unknown rule {name!r} (valid: {', '.join(RULE_NAMES)})")
        if name in limits:
            raise _config_error(f"{where}: rule {name!r} is given twice (give each rule once)")
        try:
            limits[name] = _limit(name, value)
        except _Refused as refused:
            raise _config_error(f"{where}: {refused.about(name)}") from None
    if not limits:
        raise _config_error(f"{where}: no rules (give one or more of {_RULES_ALLOWED})")
    return _rule(pattern, limits)


def rule_from_table(pattern: str, table: Mapping[str, int | str], where: str) -> RetentionRule:
    """Build the rule of a configuration file table such as `[retention."telemetry.*"]`.

    Values are typed as TOML allows: max-messages an integer, max-age a duration string, max-bytes
    an integer (bytes) or a size string. `where` is the table's key path; errors name it and the
    rule, e.g. `retention."x".max-agee: unknown rule (valid: ...)`. The caller has refused values
    that are neither integers nor strings.
    """
    if not pattern.strip():
        raise _config_error(
            f"{where}: the pattern is empty (use a topic glob such as telemetry.* or *)"
        )
    _check_pattern(where, pattern)
    limits: dict[str, int] = {}
    for name, value in table.items():
        at = f"{where}.{name}"
        if name not in RULE_NAMES:
            raise _config_error(f"{at}: unknown rule (valid: {', '.join(RULE_NAMES)})")
        if name == "max-messages" and isinstance(value, str):
            raise _config_error(f"{at} must be an integer, got the string {value!r}")
        if name == "max-age" and not isinstance(value, str):
            raise _config_error(
                f"{at} must be a duration string such as '7d', got the integer {value}"
            )
        text = str(value)
        try:
            limits[name] = _limit(name, text)
        except _Refused as refused:
            raise _config_error(refused.at(at)) from None
    if not limits:
        raise _config_error(f"{where}: no rules (give one or more of {_RULES_ALLOWED})")
    return _rule(pattern, limits)


def _check_pattern(where: str, pattern: str) -> None:
    """Refuse, naming the setting, a pattern the glob rule refuses (`validate_glob`)."""
    try:
        validate_glob("the pattern", pattern)
    except InvalidArgumentError as refused:
        raise _config_error(f"{where}: {refused}") from None


def _rule(pattern: str, limits: Mapping[str, int]) -> RetentionRule:
    return RetentionRule(
        pattern,
        max_messages=limits.get("max-messages"),
        max_age_ms=limits.get("max-age"),
        max_bytes=limits.get("max-bytes"),
    )


def _limit(name: str, text: str) -> int:
    """One rule's value, checked against the rule's range; raises `_Refused`."""
    if name == "max-age":
        return _duration_ms(text, minimum=MIN_MAX_AGE_MS)
    if name == "max-bytes":
        return _size(text)
    if not text.isdigit() or not text.isascii():
        raise _Refused(f"invalid count {text!r}", "use a whole number of at least 1")
    return _bounded("count", text, _whole(text), 1, "1")


def parse_size(text: str, what: str) -> int:
    """Parse a size in bytes: `1048576`, `500MiB`, `1.5GiB` (rounded down), `2GB`.

    A bare integer is bytes; kB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB powers of
    1024, and units are case-insensitive. Raises `ConfigError` naming `what` for anything else,
    for less than 1 byte and for more than 2**63-1.
    """
    try:
        return _size(text)
    except _Refused as refused:
        raise _config_error(refused.about(what)) from None


def parse_duration_ms(text: str, what: str) -> int:
    """Parse a duration into milliseconds: `500ms`, `90s`, `15m`, `12h`, `7d`, `2w`, `1.5h`.

    A bare number is refused: no unit is obvious enough to assume. Raises `ConfigError` naming
    `what` for a bad duration, one under 1 ms and one above 2**63-1 ms.
    """
    try:
        return _duration_ms(text, minimum=1)
    except _Refused as refused:
        raise _config_error(refused.about(what)) from None


def _size(text: str) -> int:
    match = _NUMBER.fullmatch(text.strip())
    unit = match.group(3).lower() if match else ""
    # A bare number is whole bytes; a fraction needs a unit to scale it (1.5GiB).
    bare_fraction = match is not None and not unit and match.group(2) is not None
    if match is None or (unit and unit not in _SIZE_UNITS) or bare_fraction:
        raise _Refused(f"invalid size {text!r}", _SIZE_ALLOWED)
    size = _scaled(match, _SIZE_UNITS.get(unit, 1))
    return _bounded("size", text, size, 1, "1 byte")


def _duration_ms(text: str, *, minimum: int) -> int:
    match = _NUMBER.fullmatch(text.strip())
    if match is not None and not match.group(3):
        number = match.group(0)
        raise _Refused(
            f"invalid duration {text!r}",
            f"a number needs a unit: {number}ms, {number}s, {number}m, {number}h, {number}d "
            f"or {number}w",
        )
    if match is None or match.group(3) not in _DURATION_UNITS:
        raise _Refused(f"invalid duration {text!r}", _DURATION_ALLOWED)
    duration = _scaled(match, _DURATION_UNITS[match.group(3)])
    return _bounded("duration", text, duration, minimum, _format_duration(minimum))


def _scaled(match: re.Match[str], unit: int) -> int:
    """The matched number times `unit`, rounded down; exact, with no float in between."""
    whole, decimals = match.group(1), match.group(2) or ""
    if len(whole.lstrip("0")) > _MAX_DIGITS:
        return MAX_STORED_INT + 1  # out of range whatever the unit: refused by _bounded
    return int(Fraction(f"{whole}.{decimals or '0'}") * unit)


def _whole(text: str) -> int:
    return MAX_STORED_INT + 1 if len(text.lstrip("0")) > _MAX_DIGITS else int(text)


_RANGE_WORDS: Final = {
    "size": ("small", "large", " bytes"),
    "duration": ("short", "long", " ms"),
    "count": ("small", "large", ""),
}


def _bounded(kind: str, text: str, value: int, minimum: int, minimum_text: str) -> int:
    # Stores keep counts, sizes and milliseconds as signed 64-bit integers.
    low, high, unit = _RANGE_WORDS[kind]
    if value < minimum:
        raise _Refused(f"{kind} {text!r} is too {low}", f"at least {minimum_text}")
    if value > MAX_STORED_INT:
        raise _Refused(f"{kind} {text!r} is too {high}", f"at most 2**63-1{unit}")
    return value


def _format_size(size: int) -> str:
    """The exact size with the smallest number: 1GiB, 1500MB, 1000KiB; plain bytes otherwise."""
    exact = [(size // scale, unit) for unit, scale in _SIZE_UNITS.items() if size % scale == 0]
    number, unit = min(exact)
    return str(size) if unit == "b" else f"{number}{_SIZE_SPELLING[unit]}"


def _format_duration(duration_ms: int) -> str:
    """The exact duration in the largest unit up to days: 7d, 36h, 90s, 1500ms."""
    for unit in _DURATION_SHOWN:
        if duration_ms % _DURATION_UNITS[unit] == 0:
            return f"{duration_ms // _DURATION_UNITS[unit]}{unit}"
    raise AssertionError("every whole number of milliseconds has a unit")  # pragma: no cover
