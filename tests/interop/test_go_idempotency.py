"""The Go client publishes exactly once (issue 19): a Publish repeated with its idempotency_key
answers the first envelope with `duplicate` set and stores nothing, a PublishBatch answers a flag
per entry, and an over-long key is refused naming the field, against a real daemon.

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


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_publishes_twice_with_one_key_and_stores_once(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    topic = "go.exactly-once"
    with Daemon.start(tmp_path, storage=backend) as daemon:
        output = scenarios.run(go_client, "idempotency", "-addr", daemon.endpoint, "-topic", topic)
        stored = list(daemon.stub().Fetch(pb.FetchRequest(topic=topic, from_head_id=1)))
        assert "Traceback" not in daemon.stderr_text()
    summary = _summary(output)
    assert summary["first_head"] == 1
    assert summary["first_duplicate"] is False
    assert summary["repeat_duplicate"] is True
    assert summary["same_envelope"] is True
    assert summary["batch_heads"] == [1, 2, 2]
    assert summary["batch_duplicates"] == [True, False, True]
    assert summary["too_long"]["code"] == "INVALID_ARGUMENT"
    assert "the limit is 128 UTF-8 bytes" in summary["too_long"]["message"]
    assert summary["head"] == 2
    # The daemon holds the first publish and the batch's one new entry, nothing else.
    assert [response.message.payload for response in stored] == [b"first", b"b"]
