"""Topic globs: the one rule by which msgbusd names many topics, queues or origins at once.

Every glob in the product follows it: retention rules (`--retention`), policy `topics`,
`origins`, `queues` and caller globs, `--fifo-max-attempts`, partial replication
(`--push-topics`, `--pull-topics`) and pattern Subscribe (`topic_pattern`, `origin_pattern`).
The syntax is `fnmatch.fnmatchcase`'s:

- matching is case-sensitive and covers the whole name;
- `*` matches any text, the empty text, dots and slashes included (`telemetry.*` matches
  `telemetry.cpu` and `telemetry.cpu.load`; `acme/*` matches `acme/bl/dev1`);
- `?` matches exactly one character;
- `[...]` matches one character of the set (`[0-9]`, `[ab]`), `[!...]` one not in it; a `]`
  right after `[` or `[!` belongs to the set, and `[[]`, `[*]`, `[?]` match `[`, `*`, `?`;
- every other character matches itself (`>` and `.` included: they have no meaning here).

A glob is a name with wildcards, so it has a name's limits: not empty or blank, at most 255
UTF-8 bytes, no control characters. A `[` that no `]` closes is refused rather than taken
literally (as `fnmatch` would): it is almost always a typo, and `[[]` says "a `[`" plainly.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.validation import validate_name

__all__ = [
    "GLOB_CACHE_SIZE",
    "TopicGlob",
    "compile_glob",
    "escape_glob",
    "glob_matches",
    "literal_prefix",
    "validate_glob",
]

GLOB_CACHE_SIZE: Final = 4096
"""Compiled globs kept (least recently used first out): configured globs are few, but policy
globs with placeholders are filled per caller, so the cache must not grow with the callers."""

_WILDCARD: Final = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True)
class TopicGlob:
    """One compiled glob; `matches` is a single regular-expression match."""

    text: str
    _match: Callable[[str], re.Match[str] | None]

    def matches(self, name: str) -> bool:
        """True when `name` as a whole matches the glob."""
        return self._match(name) is not None

    @property
    def literal_prefix(self) -> str:
        """The text every matching name starts with (see `literal_prefix`)."""
        return literal_prefix(self.text)


@functools.lru_cache(maxsize=GLOB_CACHE_SIZE)
def compile_glob(text: str) -> TopicGlob:
    """`text` compiled once (later calls with the same text reuse it); no validation."""
    return TopicGlob(text, re.compile(fnmatch.translate(text)).match)


def glob_matches(name: str, glob: str) -> bool:
    """True when `name` matches the glob `glob`."""
    return compile_glob(glob).matches(name)


def validate_glob(field: str, text: str) -> TopicGlob:
    """`text` compiled, or `InvalidArgumentError` naming `field` when it is not a glob.

    Refused: an empty or blank glob, one over 255 UTF-8 bytes, one with a control character,
    and a `[` that no `]` closes.
    """
    validate_name(field, text)
    unclosed = _unclosed_set(text)
    if unclosed >= 0:
        raise InvalidArgumentError(
            f"{field} {text!r} has a '[' at offset {unclosed} that no ']' closes "
            "(write [[] for a literal '[')",
            field=field,
        )
    return compile_glob(text)


def literal_prefix(text: str) -> str:
    """The part of `text` before its first `*`, `?` or `[`: every matching name starts so."""
    wildcard = _WILDCARD.search(text)
    return text if wildcard is None else text[: wildcard.start()]


def escape_glob(value: str) -> str:
    """A glob that matches exactly `value` (a name holding `*` must not match every name)."""
    return _WILDCARD.sub(r"[\g<0>]", value)


def _unclosed_set(text: str) -> int:
    """The offset of a `[` that no `]` closes, or -1; sets are read as `fnmatch` reads them."""
    index, length = 0, len(text)
    while index < length:
        if text[index] != "[":
            index += 1
            continue
        end = index + 1
        if end < length and text[end] == "!":
            end += 1
        if end < length and text[end] == "]":
            end += 1  # a `]` first in a set is a member, not its end
        end = text.find("]", end)
        if end < 0:
            return index
        index = end + 1
    return -1
