"""The Go client leases FIFO messages (issue 19): LeaseFifo in FIFO order, ExtendFifoLease,
AckFifoLease (once), RejectFifoLease redelivering with attempts + 1 and dead-lettering at
max_attempts, ListFifo of `QUEUE.dead` with the reason, RedriveFifo, and a refused lease of
too many messages, against a real daemon.

The Go run prints one JSON `summary` line, which this test checks, and the daemon's own answer
after it.
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


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_leases_extends_acks_rejects_and_redrives(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    queue = "go.jobs"
    args = ["--fifo-max-attempts", f"{queue}=2"]
    with Daemon.start(tmp_path, storage=backend, extra_args=args) as daemon:
        output = scenarios.run(go_client, "fifo-leases", "-addr", daemon.endpoint, "-queue", queue)
        left = daemon.stub().ListFifo(pb.ListFifoRequest(queue=queue)).messages
        dead = daemon.stub().ListFifo(pb.ListFifoRequest(queue=f"{queue}.dead")).messages
        assert "Traceback" not in daemon.stderr_text()
    summary = _summary(output)
    assert summary["leased"] == ["a", "b"]
    assert summary["extended"] is True
    assert summary["acked"] is True
    assert summary["acked_again"] is False
    assert (summary["redelivered"], summary["attempts"]) == ("b", 1)
    assert summary["dead_lettered"] is True
    assert summary["dead_reason"] == "max_attempts reached by reject"
    assert summary["redriven"] == 1
    assert summary["too_many"]["code"] == "INVALID_ARGUMENT"
    assert summary["left"] == ["c:0", "b:0"]
    assert [(m.payload, m.attempts) for m in left] == [(b"c", 0), (b"b", 0)]
    assert list(dead) == []
