"""Running the Python examples of the READMEs as written, against a real daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
"""A ```python block: a whole program (```py blocks are fragments, not programs)."""


def python_blocks(markdown: str) -> list[str]:
    """Every ```python block of a Markdown text, in order."""
    return PYTHON_BLOCK.findall(markdown)


def run_example(source: str, script: Path) -> None:
    """Run one example as a script and check that it succeeded and printed what it did."""
    script.write_text(source, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=script.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip(), "an example should print what it did"
