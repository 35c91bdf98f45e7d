#!/usr/bin/env bash
# mypy --strict over every hand-written Python file. Generated folders are excluded by the
# configuration in pyproject.toml. Test folders are checked one at a time because several of
# them hold modules with the same name (conftest.py, test_conformance.py ...), which mypy would
# refuse in one run. Each test folder is also its own import root: its conftest puts the folder
# on sys.path so the tests can import their `*_helpers` module.
set -euo pipefail
cd "$(dirname "$0")/.."

uv run mypy packages/*/src tools
for dir in tests/* packages/*/tests bench examples scripts; do
  [ -d "$dir" ] || continue
  if compgen -G "$dir/*.py" >/dev/null || compgen -G "$dir/**/*.py" >/dev/null; then
    MYPYPATH="$dir" uv run mypy "$dir"
  fi
done
