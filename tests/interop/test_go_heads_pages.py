"""The Go client pages ListHeads and lists only the logs changed since a cursor (issue 15).

Every later extension of the contract is exercised from Go too. On a small store, the Go
client's pages of PAGE_SIZE must add up to exactly the unpaged answer an original client gets;
the listing's cursor, passed as changed_since, lists nothing while the daemon is idle and then
exactly the logs published to, in the order of their latest change. The daemon is restarted
between two Go runs, so that the first run's cursor is one of an earlier run: the second run
must be refused with FAILED_PRECONDITION and list again. Each run prints one JSON `summary`
line, which this test checks on its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from msgbus_server.testing import Daemon

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

TOPICS = ["heads.b", "heads.é", "heads.A", "heads.a.z", "heads.10", "heads.9", "heads.a"]
"""Published in this order; listed in code-point order (uppercase, digits and é included)."""
CHANGES = ["heads.9", "heads.b", "heads.new", "heads.9"]
"""Published to after the listing: heads.9 twice, so it is listed once, at its latest change."""
PAGE_SIZE = 3


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_pages_heads_and_follows_the_changes_since_a_cursor_across_a_restart(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    with Daemon.start(tmp_path, storage=backend) as daemon:
        first = _summary(
            scenarios.run(
                go_client,
                "heads-pages",
                "-addr",
                daemon.endpoint,
                "-topics",
                ",".join(TOPICS),
                "-change",
                ",".join(CHANGES),
                "-page-size",
                str(PAGE_SIZE),
            )
        )
        daemon.restart()
        second = _summary(
            scenarios.run(
                go_client, "heads-pages", "-addr", daemon.endpoint, "-stale-cursor", first["cursor"]
            )
        )
        assert "Traceback" not in daemon.stderr_text()

    # Keyset pages of at most PAGE_SIZE, in code-point order, each log once.
    assert first["topics"] == sorted(TOPICS)
    assert first["page_sizes"] == [3, 3, 1]
    assert first["listing_cursors"] == 1
    assert first["malformed_page_token"]["code"] == "INVALID_ARGUMENT"
    assert first["malformed_page_token"]["names_field"]

    # The cursor: nothing while idle, then each changed log once, in order of its last change.
    assert first["idle"] == []
    assert first["published"] == CHANGES
    assert first["changed"] == [
        {"topic": "heads.b", "head_id": 2},
        {"topic": "heads.new", "head_id": 1},
        {"topic": "heads.9", "head_id": 3},
    ]
    assert first["changed_pages"] == 3  # page_size 1: one changed log per page
    assert first["after_changes"] == []
    assert first["malformed_cursor"]["code"] == "INVALID_ARGUMENT"
    assert first["malformed_cursor"]["names_field"]

    # After the restart the first run's cursor is refused, and a new listing's cursor works.
    stale = second["stale_cursor"]
    assert stale["code"] == "FAILED_PRECONDITION"
    assert stale["names_field"]
    assert stale["says_list_again"]
    assert second["relisted_logs"] == len(TOPICS) + 1  # heads.new too
    assert second["fresh_cursor_idle"] == []
