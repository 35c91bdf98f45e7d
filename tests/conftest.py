"""Fixtures every end-to-end folder below uses."""

from __future__ import annotations

import pytest

from msgbus_testkit.backends import BACKENDS, require_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each real store backend; skipped only while its package is not importable."""
    return require_backend(request.param)
