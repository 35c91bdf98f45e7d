"""The Go client's sequential publishes on one PublishStream (issue 20, scenario (a)).

`bench/native_client.py` compares this compiled client with the Python SDK against one msgbusd,
to tell the client's share of a sequential publish from the daemon's. This test checks that the
measurement is of real, durable, answered publishes: every one stored, in order, whole.
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

WARM, COUNT, SIZE = 5, 60, 300


def test_go_sequential_publishes_are_each_stored_before_the_next(
    go_client: Path, tmp_path: Path, scenarios: Scenarios
) -> None:
    topic = "go.latency"
    with Daemon.start(tmp_path) as daemon:
        output = scenarios.run(
            go_client,
            "publish-latency",
            "-addr",
            daemon.endpoint,
            "-topic",
            topic,
            "-count",
            str(COUNT),
            "-warm",
            str(WARM),
            "-size",
            str(SIZE),
        )
        stored = list(daemon.stub().Fetch(pb.FetchRequest(topic=topic, limit=1000)))
        assert "Traceback" not in daemon.stderr_text()
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    assert summary["count"] == COUNT
    # Each answer carried the head the daemon stored: the last one is the last publish.
    assert summary["last_head_id"] == WARM + COUNT
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert summary["rate"] > 0
    assert summary["client_cpu_us"] >= 0
    assert [s.message.head_id for s in stored] == list(range(1, WARM + COUNT + 1))
    assert all(s.message.payload == bytes(SIZE) for s in stored)
