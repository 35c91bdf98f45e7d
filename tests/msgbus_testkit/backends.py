"""The store backends the end-to-end tests run against, and skipping the ones that do not load.

`tests/conftest.py` turns `BACKENDS` into the `backend` fixture; module-scoped fixtures that
parametrise over `BACKENDS` themselves call `require_backend`.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

BACKENDS = ("sqlite", "duckdb")
"""Every real store backend (`memory` keeps nothing, so it is not one)."""


def backend_unavailable(name: str) -> str | None:
    """None when the store backend loads, else why it does not."""
    for entry in entry_points(group="msgbus.stores"):
        if entry.name == name:
            try:
                entry.load()
            except Exception as error:
                return f"{name} store not importable: {error}"
            return None
    return f"{name} store not installed"


def require_backend(name: str) -> str:
    """Skip the calling test when `name` cannot be loaded; return it otherwise."""
    reason = backend_unavailable(name)
    if reason:
        pytest.skip(reason)
    return name
