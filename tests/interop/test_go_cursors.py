"""The Go client keeps durable named cursors (issue 19): CommitCursor, GetCursor, ListCursors in
pages with the opaque token, DeleteCursor of one cursor and of every cursor of a name, and the
refusals (a head above the log's, an empty name), against a real daemon.

Every extension of the contract is exercised from Go too. The Go run prints one JSON `summary`
line, which this test checks, and the daemon's own answer after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from msgbus_proto import pb
from msgbus_server.testing import Daemon

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

COUNT, NAMES, PAGE_SIZE = 5, 7, 3


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_commits_reads_pages_and_deletes_cursors(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    topic = "go.cursors"
    with Daemon.start(tmp_path, storage=backend) as daemon:
        output = scenarios.run(
            go_client,
            "cursors",
            "-addr",
            daemon.endpoint,
            "-topic",
            topic,
            "-count",
            str(COUNT),
            "-names",
            str(NAMES),
            "-page-size",
            str(PAGE_SIZE),
        )
        left = daemon.stub().ListCursors(pb.ListCursorsRequest()).cursors
        assert "Traceback" not in daemon.stderr_text()
    summary = _summary(output)
    assert summary["committed"] == COUNT
    assert summary["read"] == COUNT
    assert summary["read_origin"] == "tenant/default/device"
    assert summary["missing_found"] is False
    consumers = [f"go-consumer-{n:02d}/{topic}" for n in range(NAMES)]
    assert summary["listed"] == [f"go-billing/{topic}", f"go-billing/{topic}.other", *consumers]
    assert summary["pages"] == -(-(NAMES + 2) // PAGE_SIZE)
    assert summary["above_head"]["code"] == "FAILED_PRECONDITION"
    assert f"above the head {COUNT}" in summary["above_head"]["message"]
    assert summary["empty_name"]["code"] == "INVALID_ARGUMENT"
    assert summary["deleted_one"] == 1
    assert summary["deleted_name"] == 1
    assert summary["left"] == []
    # The refused commits stored nothing; the consumers' cursors are all that is left.
    assert [(c.name, c.head_id) for c in left] == [
        (f"go-consumer-{n:02d}", 1) for n in range(NAMES)
    ]
