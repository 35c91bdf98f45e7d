"""The Go client publishes over PublishStream (issue 20): every request in flight at once, one
refused in the middle with the unary RPC's code and message, the stream going on after it.

Every extension of the contract is exercised from Go too. The Go run prints one JSON `summary`
line of its answers, which this test checks against the log the daemon stored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from msgbus_proto import pb
from msgbus_server.testing import Daemon

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

COUNT = 10


def _summary(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: list[dict[str, Any]] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_publishes_on_one_stream_past_a_refused_request(
    go_client: Path, tmp_path: Path, scenarios: Scenarios
) -> None:
    topic = "go.stream"
    with Daemon.start(tmp_path) as daemon:
        output = scenarios.run(
            go_client,
            "publish-stream",
            "-addr",
            daemon.endpoint,
            "-topic",
            topic,
            "-count",
            str(COUNT),
        )
        stored = list(daemon.stub().Fetch(pb.FetchRequest(topic=topic, limit=100)))
        assert "Traceback" not in daemon.stderr_text()
    answers = _summary(output)
    assert [a["request_id"] for a in answers] == list(range(100, 100 + COUNT + 2))
    refused = answers[COUNT // 2]
    assert refused == {
        "request_id": 100 + COUNT // 2,
        "heads": [],
        "code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "message": "topic is empty",
    }
    accepted = [a for a in answers if a is not refused]
    assert all(a["code"] == 0 for a in accepted)
    assert [a["heads"] for a in accepted] == [[i] for i in range(1, COUNT + 1)] + [
        [COUNT + 1, COUNT + 2]
    ]
    # Nothing of the refused request was stored; the rest in request order.
    payloads = [s.message.payload for s in stored]
    assert payloads == [f"go-{i}".encode() for i in range(COUNT)] + [b"batch-a", b"batch-b"]
