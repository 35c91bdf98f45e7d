"""Retention and disk-budget settings: `--retention`, `--max-disk-bytes`, `--discard`,
`--retain-unsynced`, from flags, variables and the `--config` file.

The parsers and the layering are checked in process (`parse_config` on real files); a few real
msgbusd runs show that a bad setting is one stderr line with nothing created, and that a file
with retention tables starts a daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from msgbus_server.cli import parse_config
from msgbus_server.config import ConfigError, DaemonConfig
from msgbus_server.retention_rules import (
    DISCARD_POLICIES,
    POLICY_CACHE_TOPICS,
    RetentionPolicy,
    RetentionRule,
    parse_duration_ms,
    parse_retention,
    parse_size,
)
from msgbus_server.testing import Daemon, run_msgbusd

MiB = 1024 * 1024
GiB = 1024 * MiB
DAY_MS = 86_400_000
MAX = 2**63 - 1


@pytest.fixture(autouse=True)
def no_msgbus_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_config reads MSGBUS_* variables: the test process must not lend it any."""
    for key in [k for k in os.environ if k.startswith("MSGBUS_")]:
        monkeypatch.delenv(key)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "msgbusd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(argv)
    message = str(caught.value)
    assert "\n" not in message
    return message


def patterns(config: DaemonConfig) -> list[str]:
    return [str(rule) for rule in config.retention.rules]


# -- rules as text ------------------------------------------------------------------------------


CANONICAL = [
    ("telemetry.*:max-age=7d,max-bytes=1GiB", "telemetry.*:max-age=7d,max-bytes=1GiB"),
    # Limits in a fixed order; weeks are shown as days.
    ("telemetry.*:max-bytes=1gib,max-age=1w", "telemetry.*:max-age=7d,max-bytes=1GiB"),
    ("*:max-messages=1000000", "*:max-messages=1000000"),
    ("$msgbus.delete:max-age=90s", "$msgbus.delete:max-age=90s"),
    # Split on the last colon: topics, and so patterns, may hold colons.
    ("site:a/*:max-age=36h", "site:a/*:max-age=36h"),
    (" x :  max-age = 1.5h , max-messages=3 ", "x:max-messages=3,max-age=90m"),
    ("x:max-age=1s,", "x:max-age=1s"),
    ("x:max-age=1500ms", "x:max-age=1500ms"),
    ("x:max-age=15250284452w", "x:max-age=106751991164d"),  # the longest, under 2**63-1 ms
    ("x:max-bytes=1.5GiB", "x:max-bytes=1536MiB"),
    ("x:max-bytes=1500mb", "x:max-bytes=1500MB"),
    ("x:max-bytes=2KB", "x:max-bytes=2kB"),
    ("x:max-bytes=1025", "x:max-bytes=1025"),
    ("x:max-bytes=1.9B", "x:max-bytes=1"),
    (f"x:max-messages={MAX},max-bytes={MAX}", f"x:max-messages={MAX},max-bytes={MAX}"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL, ids=[t for t, _ in CANONICAL])
def test_a_spec_parses_to_a_rule_whose_text_reads_back_equal(text: str, canonical: str) -> None:
    rule = parse_retention(text)
    assert str(rule) == canonical
    assert parse_retention(str(rule)) == rule


def test_a_spec_sets_exactly_the_limits_it_names() -> None:
    assert parse_retention("telemetry.*:max-age=7d,max-bytes=1GiB") == RetentionRule(
        "telemetry.*", max_age_ms=7 * DAY_MS, max_bytes=GiB
    )
    assert parse_retention("*:max-messages=5") == RetentionRule("*", max_messages=5)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("7", 7),
        ("1B", 1),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1kb", 1000),
        ("1KiB", 1024),
        ("1kib", 1024),
        ("2MB", 2 * 10**6),
        ("2MiB", 2 * MiB),
        ("3GB", 3 * 10**9),
        ("1.5GiB", 3 * GiB // 2),
        ("1TB", 10**12),
        ("1TiB", 1024 * GiB),
        ("1.0009KiB", 1024),  # 1024.92 bytes, rounded down
        ("2 GiB", 2 * GiB),
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text, "max-bytes") == size


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1ms", 1),
        ("90s", 90_000),
        ("15m", 900_000),
        ("12h", 43_200_000),
        ("7d", 7 * DAY_MS),
        ("2w", 14 * DAY_MS),
        ("1.5h", 5_400_000),
        ("0.0019s", 1),
    ],
)
def test_parse_duration_ms_reads_every_unit(text: str, ms: int) -> None:
    assert parse_duration_ms(text, "max-age") == ms


BAD_SPECS = [
    ("telemetry.*", ["--retention 'telemetry.*'", "expected PATTERN:RULES", "max-age=7d"]),
    (":max-age=7d", ["the pattern is empty", "telemetry.*"]),
    ("  :max-age=7d", ["the pattern is empty"]),
    ("x:", ["no rules", "max-messages=N, max-age=DURATION, max-bytes=SIZE"]),
    ("x: , ", ["no rules"]),
    ("x:max-age", ["rule 'max-age' has no value", "name=value"]),
    ("x:max-age=", ["rule 'max-age=' has no value"]),
    ("x:max-agee=7d", ["unknown rule 'max-agee'", "(valid: max-messages, max-age, max-bytes)"]),
    ("x:max-age=1d,max-age=2d", ["rule 'max-age' is given twice"]),
    (
        "telemetry.*:max-age=7x",
        [
            "--retention 'telemetry.*:max-age=7x': invalid duration '7x' for max-age (use a "
            "number with ms, s, m, h, d or w, e.g. 90s, 12h, 7d)"
        ],
    ),
    ("x:max-age=7", ["invalid duration '7' for max-age", "needs a unit", "7s", "7d"]),
    ("x:max-age=7D", ["invalid duration '7D'"]),
    ("x:max-age=-1s", ["invalid duration '-1s'"]),
    ("x:max-age=999ms", ["duration '999ms' is too short for max-age (at least 1s)"]),
    ("x:max-age=15250284453w", ["is too long for max-age (at most 2**63-1 ms)"]),
    ("x:max-bytes=lots", ["invalid size 'lots' for max-bytes", "KiB", "GiB", "500MiB"]),
    ("x:max-bytes=1.5", ["invalid size '1.5'", "whole number of bytes"]),
    ("x:max-bytes=2GiBs", ["invalid size '2GiBs'"]),
    ("x:max-bytes=0", ["size '0' is too small for max-bytes (at least 1 byte)"]),
    ("x:max-bytes=0.5B", ["size '0.5B' is too small"]),
    (f"x:max-bytes={MAX + 1}", ["is too large for max-bytes (at most 2**63-1 bytes)"]),
    ("x:max-bytes=8EiB", ["invalid size '8EiB'"]),
    ("x:max-messages=0", ["count '0' is too small for max-messages (at least 1)"]),
    ("x:max-messages=1e6", ["invalid count '1e6'", "whole number"]),
    ("x:max-messages=" + "9" * 5000, ["is too large for max-messages (at most 2**63-1)"]),
]


@pytest.mark.parametrize(("text", "words"), BAD_SPECS, ids=[t[:30] for t, _ in BAD_SPECS])
def test_a_bad_spec_names_the_spec_the_part_and_what_is_allowed(
    text: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_retention(text)
    message = str(caught.value)
    assert message.startswith(f"--retention {text!r}: "), message
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_size_and_duration_errors_name_what_they_are_for() -> None:
    with pytest.raises(ConfigError, match=r"invalid size '1 ton' for --max-disk-bytes \(use "):
        parse_size("1 ton", "--max-disk-bytes")
    with pytest.raises(ConfigError, match="too large for --max-disk-bytes"):
        parse_size("1" + "0" * 5000, "--max-disk-bytes")  # no crash on a huge number
    with pytest.raises(ConfigError, match=r"invalid duration '' for timeout \(use "):
        parse_duration_ms("", "timeout")
    with pytest.raises(ConfigError, match=r"duration '0ms' is too short for timeout"):
        parse_duration_ms("0ms", "timeout")


# -- the policy ---------------------------------------------------------------------------------


def test_the_first_matching_rule_applies_and_star_crosses_dots() -> None:
    gps = parse_retention("telemetry.gps:max-messages=10")
    telemetry = parse_retention("telemetry.*:max-age=7d")
    everything = parse_retention("*:max-messages=1000")
    policy = RetentionPolicy((gps, telemetry, everything))
    assert policy.rule_for("telemetry.gps") is gps
    assert policy.rule_for("telemetry.gps.raw") is telemetry
    assert policy.rule_for("telemetry.a.b") is telemetry
    assert policy.rule_for("Telemetry.a") is everything  # case-sensitive
    assert policy.rule_for("orders") is everything
    narrow = RetentionPolicy((gps,))
    assert narrow.rule_for("orders") is None
    assert narrow
    assert not RetentionPolicy()


def test_the_policy_remembers_a_bounded_number_of_topics() -> None:
    even = parse_retention("*[02468]:max-messages=1")
    policy = RetentionPolicy((even,))
    for round_ in range(2):  # the second round reads through a memo that was cleared
        for number in range(POLICY_CACHE_TOPICS * 2 + 7):
            expected = even if number % 2 == 0 else None
            assert policy.rule_for(f"t{number}") is expected, (round_, number)
            assert len(policy._matched) <= POLICY_CACHE_TOPICS


def test_a_pattern_given_twice_is_refused() -> None:
    rules = (parse_retention("a.*:max-age=1d"), parse_retention("a.*:max-messages=5"))
    with pytest.raises(ConfigError, match=r"the pattern 'a\.\*' is given twice"):
        RetentionPolicy(rules)


# -- flags, variables and the file --------------------------------------------------------------


def test_by_default_nothing_is_trimmed_and_there_is_no_budget() -> None:
    config = parse_config([])
    assert not config.retention
    assert (config.max_disk_bytes, config.discard, config.retain_unsynced) == (None, "old", True)
    assert DISCARD_POLICIES == ("old", "new")


def test_retention_from_repeated_flags_keeps_their_order() -> None:
    argv = ["--retention", "telemetry.*:max-age=7d,max-bytes=1GiB"]
    argv += ["--retention", "*:max-messages=1000000"]
    config = parse_config(argv)
    assert patterns(config) == ["telemetry.*:max-age=7d,max-bytes=1GiB", "*:max-messages=1000000"]
    assert config.retention.rule_for("telemetry.gps") == config.retention.rules[0]


def test_retention_from_the_variable_takes_specs_separated_by_semicolons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MSGBUS_RETENTION", "telemetry.*:max-age=7d,max-bytes=1GiB; *:max-age=30d;")
    assert patterns(parse_config([])) == [
        "telemetry.*:max-age=7d,max-bytes=1GiB",
        "*:max-age=30d",
    ]
    monkeypatch.setenv("MSGBUS_RETENTION", "a:max-age=1d;a:max-age=2d")
    message = refused([])
    assert message.startswith("--retention: the pattern 'a' is given twice"), message
    assert message.endswith("(from MSGBUS_RETENTION)"), message
    monkeypatch.setenv("MSGBUS_RETENTION", "a:max-age=1x")
    assert refused([]).endswith(
        "for max-age (use a number with ms, s, m, h, d or w, e.g. 90s, "
        "12h, 7d) (from MSGBUS_RETENTION)"
    )


def test_retention_from_the_file_as_an_array_or_as_tables_in_file_order(tmp_path: Path) -> None:
    array = write_config(tmp_path, 'retention = ["telemetry.*:max-age=7d", "*:max-bytes=2GB"]\n')
    assert patterns(parse_config(["--config", str(array)])) == [
        "telemetry.*:max-age=7d",
        "*:max-bytes=2GB",
    ]
    one = write_config(tmp_path, 'retention = "*:max-messages=10"\n')
    assert patterns(parse_config(["--config", str(one)])) == ["*:max-messages=10"]
    # Tables in an order that is neither sorted nor reversed: the file's order is the policy's.
    tables = write_config(
        tmp_path,
        '[retention."telemetry.gps"]\nmax-messages = 10\n'
        '[retention."*"]\nmax-messages = 1000000\n'
        '[retention."telemetry.*"]\nmax-age = "7d"\nmax-bytes = "1GiB"\n'
        '[retention."$msgbus.delete"]\nmax-bytes = 1048576\nmax-age = "1.5h"\n',
    )
    config = parse_config(["--config", str(tables)])
    assert patterns(config) == [
        "telemetry.gps:max-messages=10",
        "*:max-messages=1000000",
        "telemetry.*:max-age=7d,max-bytes=1GiB",
        "$msgbus.delete:max-age=90m,max-bytes=1MiB",
    ]
    assert config.retention.rule_for("telemetry.a") == parse_retention("*:max-messages=1000000")


def test_flag_or_variable_retention_replaces_the_files_wholesale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path, '[retention."telemetry.*"]\nmax-age = "7d"\n[retention."*"]\nmax-age = "30d"\n'
    )
    use = ["--config", str(config)]
    monkeypatch.setenv("MSGBUS_RETENTION", "env.*:max-messages=5")
    assert patterns(parse_config(use)) == ["env.*:max-messages=5"]
    assert patterns(parse_config([*use, "--retention", "flag:max-age=1h"])) == ["flag:max-age=1h"]
    monkeypatch.setenv("MSGBUS_RETENTION", "")  # an empty variable counts as unset
    assert patterns(parse_config(use)) == ["telemetry.*:max-age=7d", "*:max-age=30d"]


BAD_FILES = [
    (
        '[retention."telemetry.*"]\nmax-age = "7x"\n',
        "retention.\"telemetry.*\".max-age: invalid duration '7x' (use a number with ms, s, m, h, "
        "d or w, e.g. 90s, 12h, 7d)",
    ),
    (
        '[retention."x"]\nmax-agee = "7d"\n',
        'retention."x".max-agee: unknown rule (valid: max-messages, max-age, max-bytes)',
    ),
    ('[retention."x"]\nmax-age = 7\n', 'retention."x".max-age must be a duration string'),
    ('[retention."x"]\nmax-messages = "100"\n', "max-messages must be an integer, got the str"),
    ('[retention."x"]\nmax-messages = 0\n', "count '0' is too small (at least 1)"),
    ('[retention."x"]\nmax-bytes = true\n', 'retention."x".max-bytes must be an integer or a'),
    ('[retention."x"]\nmax-bytes = "1 ton"\n', "retention.\"x\".max-bytes: invalid size '1 ton'"),
    ('[retention."x"]\nmax-bytes = -5\n', "retention.\"x\".max-bytes: invalid size '-5'"),
    ('[retention."x"]\n', 'retention."x": no rules (give one or more of max-messages=N'),
    ('[retention.""]\nmax-age = "1d"\n', 'retention."": the pattern is empty'),
    ("[retention]\nx = 5\n", 'retention."x" must be a table of rules'),
    ("retention = 5\n", 'retention must be an array of "PATTERN:RULES" strings or a table'),
    ("retention = [1]\n", "an array holding the number 1"),
    ("max-disk-bytes = true\n", "max-disk-bytes must be an integer (bytes) or a size string"),
    ('retain-unsynced = "no"\n', "retain-unsynced must be a boolean"),
    ('discard = "oldest"\n', "discard: invalid choice 'oldest' (choose from old, new)"),
]


@pytest.mark.parametrize(("text", "words"), BAD_FILES, ids=[t[:30] for t, _ in BAD_FILES])
def test_a_bad_retention_file_names_the_file_and_the_key_path(
    tmp_path: Path, text: str, words: str
) -> None:
    config = write_config(tmp_path, text)
    message = refused(["--config", str(config)])
    assert message.startswith(f"{config}: "), message
    assert words in message, message


def test_bad_specs_in_the_files_array_are_traced_to_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'retention = ["a:max-age=1d", "a:max-bytes=1"]\n')
    message = refused(["--config", str(config)])
    assert message == (
        "--retention: the pattern 'a' is given twice (give each pattern once; the first matching "
        f"pattern applies) (from {config})"
    )
    config = write_config(tmp_path, 'retention = ["a:max-agee=1d"]\n')
    assert refused(["--config", str(config)]).endswith(
        f"unknown rule 'max-agee' (valid: max-messages, max-age, max-bytes) (from {config})"
    )


def test_retain_unsynced_from_flags_the_variable_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_config(["--no-retain-unsynced"]).retain_unsynced is False
    assert parse_config(["--retain-unsynced"]).retain_unsynced is True
    off = write_config(tmp_path, "retain-unsynced = false\n")
    assert parse_config(["--config", str(off)]).retain_unsynced is False
    # A flag given with the default's value still beats the file: absent is told from given.
    assert parse_config(["--config", str(off), "--retain-unsynced"]).retain_unsynced is True
    for word, value in [("0", False), ("off", False), ("No", False), (" TRUE ", True), ("1", True)]:
        monkeypatch.setenv("MSGBUS_RETAIN_UNSYNCED", word)
        assert parse_config(["--config", str(off)]).retain_unsynced is value, word
    assert parse_config(["--no-retain-unsynced"]).retain_unsynced is False
    # A typo must not silently turn the on-by-default setting off.
    monkeypatch.setenv("MSGBUS_RETAIN_UNSYNCED", "enabled")
    assert refused([]) == (
        "--retain-unsynced (MSGBUS_RETAIN_UNSYNCED): invalid boolean value 'enabled' "
        "(use 1/0, true/false, yes/no or on/off)"
    )


@pytest.mark.parametrize(
    ("text", "budget"),
    [("2GiB", 2 * GiB), ("1MiB", MiB), ("1048576", MiB), ("1.5MB", 1_500_000), ("5gb", 5 * 10**9)],
)
def test_max_disk_bytes_takes_a_size_of_at_least_one_mib(text: str, budget: int) -> None:
    assert parse_config(["--max-disk-bytes", text]).max_disk_bytes == budget


def test_max_disk_bytes_below_the_minimum_or_malformed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert refused(["--max-disk-bytes", "1048575"]) == (
        "--max-disk-bytes must be at least 1MiB (1048576 bytes), got '1048575'"
    )
    assert refused(["--max-disk-bytes", "0.99MiB"]).startswith("--max-disk-bytes must be at least")
    assert "invalid size 'lots' for --max-disk-bytes" in refused(["--max-disk-bytes", "lots"])
    monkeypatch.setenv("MSGBUS_MAX_DISK_BYTES", "1kB")
    assert refused([]).endswith("got '1kB' (from MSGBUS_MAX_DISK_BYTES)")
    monkeypatch.setenv("MSGBUS_MAX_DISK_BYTES", "3MiB")
    assert parse_config([]).max_disk_bytes == 3 * MiB
    monkeypatch.delenv("MSGBUS_MAX_DISK_BYTES")
    # The file takes bytes as an integer or a size string.
    config = write_config(tmp_path, "max-disk-bytes = 5000000\n")
    assert parse_config(["--config", str(config)]).max_disk_bytes == 5_000_000
    config = write_config(tmp_path, 'max-disk-bytes = "5MB"\n')
    assert parse_config(["--config", str(config)]).max_disk_bytes == 5_000_000
    config = write_config(tmp_path, "max-disk-bytes = 1000\n")
    assert refused(["--config", str(config)]).endswith(f"got 1000 (from {config})")


def test_discard_is_old_or_new_from_each_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_config(["--discard", "new"]).discard == "new"
    config = write_config(tmp_path, 'discard = "new"\n')
    assert parse_config(["--config", str(config)]).discard == "new"
    assert parse_config(["--config", str(config), "--discard", "old"]).discard == "old"
    monkeypatch.setenv("MSGBUS_DISCARD", "drop")
    assert refused([]) == "--discard (MSGBUS_DISCARD): invalid choice 'drop' (choose from old, new)"


# -- real daemons -------------------------------------------------------------------------------


def one_error_line(args: list[str], data: Path) -> str:
    """msgbusd exits 2 with one line and no traceback, and creates nothing next to `data`."""
    result = run_msgbusd([*args, "--data", str(data)], cwd=data.parent)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("msgbusd: error: "), line
    assert not data.exists()
    return line


def test_msgbusd_refuses_bad_retention_settings_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = run_dir / "bus.sqlite"
    line = one_error_line(["--retention", "telemetry.*:max-age=7x"], data)
    assert "--retention 'telemetry.*:max-age=7x': invalid duration '7x' for max-age" in line
    config = write_config(tmp_path, '[retention."telemetry.*"]\nmax-agee = "7d"\n')
    line = one_error_line(["--config", str(config)], data)
    assert f'{config}: retention."telemetry.*".max-agee: unknown rule (valid: ' in line, line
    line = one_error_line(["--max-disk-bytes", "512KiB"], data)
    assert "--max-disk-bytes must be at least 1MiB" in line, line
    assert list(run_dir.iterdir()) == [], "nothing is created"


def test_a_daemon_starts_with_retention_tables_a_budget_and_its_switches(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'max-disk-bytes = "64MiB"\ndiscard = "new"\n'
        '[retention."telemetry.*"]\nmax-age = "7d"\nmax-bytes = "1GiB"\n',
    )
    args = ["--config", str(config), "--no-retain-unsynced"]
    with Daemon.start(tmp_path / "daemon", extra_args=args) as daemon:
        assert daemon.data_path.is_file()
        assert daemon.stop() == 0
        assert "Traceback" not in daemon.stderr_text()
