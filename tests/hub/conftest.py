"""Fixtures of the hub tests: real PostgreSQL servers, and hub daemons (msgbusd) on them.

The PostgreSQL fixtures are `msgbus_testkit.postgres`'s: `postgres_dsn` (a fresh database on
the worker's shared server) for tests that leave the server alone, `postgres_server_factory`
(a private server) for tests that stop, kill or restart theirs. Without PostgreSQL binaries the
tests skip saying why; under `CI=true` they fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from msgbus_server.testing import Daemon
from msgbus_testkit.postgres import postgres_dsn, postgres_server, postgres_server_factory

HUB_NODE = "acme/hub/h1"
"""The node identity every process of the hub shares: they serve the same logs."""


class HubStarter(Protocol):
    """Starts one more msgbusd process of the hub on a database; `start_hub` stops them all."""

    def __call__(self, dsn: str, name: str, *, extra_args: Sequence[str] = ()) -> Daemon: ...


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[HubStarter]:
    """Start hub processes (`--storage postgres --data DSN`, node `HUB_NODE`) for one test.

    Each process gets its own folder under the test's `tmp_path` (named `name`), for its
    logs: the data is in the database. Every process is stopped after the test (killed if it
    does not stop in time), before the database fixtures drop the database.
    """
    with contextlib.ExitStack() as stack:

        def start(dsn: str, name: str, *, extra_args: Sequence[str] = ()) -> Daemon:
            daemon = Daemon.start(
                tmp_path / name,
                storage="postgres",
                data=dsn,
                node=HUB_NODE,
                extra_args=extra_args,
            )
            stack.enter_context(daemon)
            return daemon

        yield start


__all__ = [
    "HUB_NODE",
    "HubStarter",
    "postgres_dsn",
    "postgres_server",
    "postgres_server_factory",
    "start_hub",
]
