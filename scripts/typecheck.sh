#!/usr/bin/env bash
# mypy --strict over every hand-written Python file. Generated folders are excluded by the
# configuration in pyproject.toml. Test folders are checked one at a time because several of
# them hold modules with the same name (conftest.py, test_conformance.py ...), which mypy would
# refuse in one run. Each folder is its own import root (MYPYPATH); the shared test package
# (tests/msgbus_testkit) and the soak workloads (scripts/workloads) are found through
# mypy_path in pyproject.toml, as pytest finds them through its `pythonpath` option.
set -euo pipefail
cd "$(dirname "$0")/.."

uv run mypy packages/*/src tools
# The shared test package and tests/conftest.py, named as the tests import them.
MYPYPATH=tests uv run mypy tests/msgbus_testkit tests/conftest.py
for dir in tests/* packages/*/tests bench examples scripts; do
  [ -d "$dir" ] || continue
  [ "$dir" = tests/msgbus_testkit ] && continue
  if compgen -G "$dir/*.py" >/dev/null || compgen -G "$dir/**/*.py" >/dev/null; then
    MYPYPATH="$dir" uv run mypy "$dir"
  fi
done
