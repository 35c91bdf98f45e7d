"""The msgbusd configuration file (`--config PATH`): TOML, one key per flag.

A key is the flag's long name without its dashes (`listen`, `max-payload-bytes`), and its value
has the flag's type: a string, an integer, a boolean for an on/off flag such as `volatile`, and
for a repeatable flag (`peer`) an array of strings or one string. A size (`max-disk-bytes`) is
an integer of bytes or a string such as "2GiB". Relative paths resolve against the file's
directory, not the daemon's working directory: a file in /etc/msgbus means the same wherever
msgbusd is started from.

Retention is an array of `PATTERN:RULES` strings, as the flag takes them, or a table per
pattern, in file order (the first matching pattern applies):

    [retention."telemetry.*"]
    max-age = "7d"
    max-bytes = "1GiB"

The file knows nothing of argparse: the CLI derives the keys from its flags and says how each
one is typed.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from msgbus_server.config import ConfigError
from msgbus_server.retention_rules import RetentionRule, rule_from_table

ValueKind = Literal[
    "string", "integer", "boolean", "strings", "size", "retention", "policy", "max-attempts"
]
"""The TOML type a key takes; `strings` is a repeatable flag (an array, or one string), `size`
an integer or a string, `retention` an array of strings or a table of rule tables, `policy` a
path or the `[policy]` table itself (which `msgbus_server.policy` parses), `max-attempts` an
array of "PATTERN=N" strings or a table of PATTERN = N (read as those strings, in file order)."""

FileValue = str | int | bool | list[str] | tuple[RetentionRule, ...] | dict[str, object]
"""A checked value; retention tables arrive parsed, as rules in file order; a policy table
arrives as it is."""

_EXPECTED: dict[ValueKind, str] = {
    "string": "a string",
    "integer": "an integer",
    "boolean": "a boolean (true or false)",
    "strings": "an array of strings",
    "size": "an integer (bytes) or a size string such as '2GiB'",
    "retention": 'an array of "PATTERN:RULES" strings or a table per pattern',
    "policy": "a table ([policy]) or the path of a policy file",
    "max-attempts": 'an array of "PATTERN=N" strings or a table of PATTERN = N',
}
_AT_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)$")


@dataclass(frozen=True, slots=True)
class FileKey:
    """How one flag is written in the file."""

    kind: ValueKind
    is_path: bool = False
    """A relative value resolves against the file's directory."""


def load_config_file(path: str, keys: Mapping[str, FileKey]) -> dict[str, FileValue]:
    """Read the file at `path` and return its settings by key, type-checked, paths resolved.

    Raises `ConfigError` with one line naming the file, and the key when there is one, for an
    unreadable file, invalid TOML, an unknown key or a value of the wrong type.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(
            f"--config {path}: cannot read the file: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a TOML file (it is not UTF-8 text)") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(_syntax_error(path, text, error)) from None
    base = Path(path).absolute().parent
    settings: dict[str, FileValue] = {}
    for key, value in document.items():
        spec = keys.get(key)
        if spec is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggestion(key, keys)}")
        checked = _checked(path, key, value, spec.kind)
        settings[key] = _resolved(checked, base) if spec.is_path else checked
    return settings


def _checked(path: str, key: str, value: object, kind: ValueKind) -> FileValue:
    if kind == "boolean" and isinstance(value, bool):
        return value
    # TOML booleans are Python ints as well: `true` is not an integer setting.
    if kind in ("integer", "size") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in ("string", "size") and isinstance(value, str):
        return value
    if kind in ("strings", "retention", "max-attempts") and isinstance(value, str):
        return [value]
    if kind == "max-attempts" and isinstance(value, dict):
        return _max_attempts_table(path, key, value)
    if kind == "retention" and isinstance(value, dict):
        return _retention_tables(path, key, value)
    if kind == "policy" and isinstance(value, str | dict):
        return value
    if kind in ("strings", "retention", "max-attempts") and isinstance(value, list):
        strings = [item for item in value if isinstance(item, str)]
        if len(strings) == len(value):
            return strings
    raise ConfigError(f"{path}: {key} must be {_EXPECTED[kind]}, got {described(value)}")


def _retention_tables(
    path: str, key: str, tables: Mapping[str, object]
) -> tuple[RetentionRule, ...]:
    # tomllib keeps the file's order, which is the order patterns are matched in.
    rules = []
    for pattern, table in tables.items():
        where = f"{key}.{_quoted(pattern)}"
        if not isinstance(table, dict):
            raise ConfigError(
                f'{path}: {where} must be a table of rules such as max-age = "7d", '
                f"got {described(table)}"
            )
        for name, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigError(
                    f"{path}: {where}.{name} must be an integer or a string, got {described(value)}"
                )
        try:
            rules.append(rule_from_table(pattern, table, where))
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    return tuple(rules)


def _max_attempts_table(path: str, key: str, table: Mapping[str, object]) -> list[str]:
    """`[fifo-max-attempts]` as the flag's `PATTERN=N` specs, in file order."""
    specs = []
    for pattern, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"{path}: {key}.{_quoted(pattern)} must be an integer, got {described(value)}"
            )
        specs.append(f"{pattern}={value}")
    return specs


def _quoted(name: str) -> str:
    """`name` as a TOML key, quoted as the file must write a pattern such as `telemetry.*`."""
    return json.dumps(name, ensure_ascii=False)


def _resolved(value: FileValue, base: Path) -> FileValue:
    # An empty path stays empty, so that the daemon's own "must not be empty" check reports it.
    # A URI (`data = "postgresql://..."`) is not a path.
    if isinstance(value, str) and value and "://" not in value:
        return str(base / value)
    return value


def described(value: object) -> str:
    """What a TOML value is, for an error: `the string 'x'`, `a table`, `an array`..."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        odd = [item for item in value if not isinstance(item, str)]
        return f"an array holding {described(odd[0])}" if odd else "an array"
    return f"a {type(value).__name__}"


def _suggestion(key: str, keys: Mapping[str, FileKey]) -> str:
    # Flag spellings (`--listen`, `max_payload_bytes`) map to their key before difflib guesses.
    spelled = key.lstrip("-").replace("_", "-")
    close = [spelled] if spelled in keys else difflib.get_close_matches(spelled, keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _syntax_error(path: str, text: str, error: tomllib.TOMLDecodeError) -> str:
    # tomllib says where ("at line 3, column 20"); the line itself usually names the key.
    reason = str(error)
    match = _AT_LINE.search(reason)
    if match is None:
        return f"{path}: invalid TOML: {reason}"
    number = int(match.group(1))
    lines = text.splitlines()
    shown = f": {lines[number - 1].strip()!r}" if 0 < number <= len(lines) else ""
    return f"{path}: line {number}: invalid TOML ({reason[: match.start()]}){shown}"
