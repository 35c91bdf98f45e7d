"""A malformed glob in any msgbusd setting is one stderr line naming the setting (exit 2).

Every glob setting goes through the one rule of `msgbus_server.topic_globs`, so each refuses the
same malformed glob (a `[` that no `]` closes) and nothing is created.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from msgbus_server.testing import run_msgbusd

BAD = "jobs.[x"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--retention", f"{BAD}:max-messages=5"], f"--retention '{BAD}:max-messages=5'"),
        (["--fifo-max-attempts", f"{BAD}=5"], f"--fifo-max-attempts '{BAD}=5'"),
        (["--push-topics", f"a.*,{BAD}"], f"--push-topics 'a.*,{BAD}'"),
        (["--pull-topics", BAD], f"--pull-topics '{BAD}'"),
        (["--policy", "POLICY"], "policy.rule[0].topics[0]"),
    ],
)
def test_a_malformed_glob_setting_is_one_line_naming_it(
    tmp_path: Path, args: list[str], named: str
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        f'[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["read"]\ntopics = ["{BAD}"]\n'
    )
    args = [str(policy) if arg == "POLICY" else arg for arg in args]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = run_dir / "bus.sqlite"
    result = run_msgbusd([*args, "--data", str(data)], cwd=run_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert named in line, line
    assert f"'{BAD}' has a '[' at offset 5 that no ']' closes" in line, line
    assert list(run_dir.iterdir()) == [], "nothing is created"
