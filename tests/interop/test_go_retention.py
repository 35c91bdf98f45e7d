"""The Go client reads a log that retention trimmed (the retention extension of msgbus.v1).

Every later extension of the contract is exercised from Go too: against a daemon that keeps the
newest MAX_MESSAGES of each `trim.*` log, the Go client publishes PUBLISHED messages, waits for
the background trim, and reports what GetHead, ListHeads, Fetch and Subscribe said as one JSON
`summary` line, which this test checks on its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from msgbus_server.testing import Daemon

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

PUBLISHED = 20
MAX_MESSAGES = 5
FIRST_HELD = PUBLISHED - MAX_MESSAGES + 1
"""The log keeps its newest MAX_MESSAGES heads, so it starts here (heads are never reused)."""


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def _heads(responses: list[dict[str, Any]]) -> list[int]:
    return [head for response in responses for head in response["heads"]]


def _first_head_ids(responses: list[dict[str, Any]]) -> list[int]:
    return [response["first_head_id"] for response in responses]


def test_go_reads_a_trimmed_log_from_its_first_head_and_is_told_where_it_starts(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    unique = uuid.uuid4().hex[:8]
    topic, untrimmed = f"trim.{unique}", f"keep.{unique}"
    retention = ["--retention", f"trim.*:max-messages={MAX_MESSAGES}"]
    with Daemon.start(tmp_path, storage=backend, extra_args=retention) as daemon:
        output = scenarios.run(
            go_client,
            "retention-check",
            "-addr",
            daemon.endpoint,
            "-topic",
            topic,
            "-untrimmed-topic",
            untrimmed,
            "-publish",
            str(PUBLISHED),
            "-max-messages",
            str(MAX_MESSAGES),
        )
        assert "Traceback" not in daemon.stderr_text()

    summary = _summary(output)
    held = list(range(FIRST_HELD, PUBLISHED + 1))
    sizes = summary["payload_sizes"]
    assert len(sizes) == PUBLISHED
    assert len(set(sizes)) == PUBLISHED  # so the bytes below tell which heads are held
    # No headers were published, so the bytes held are the held payloads alone.
    held_bytes = sum(sizes[h - 1] for h in held)
    head = {"head_id": PUBLISHED, "first_head_id": FIRST_HELD, "bytes": held_bytes}
    assert summary["get_head"] == head
    assert summary["list_heads"] == head

    for read in ("fetch", "fetch_packed", "subscribe"):
        responses = summary[read]
        assert _heads(responses) == held, read
        # Only the first response after the trimmed prefix says where the log now starts.
        assert _first_head_ids(responses) == [FIRST_HELD] + [0] * (len(responses) - 1), read
    assert len(summary["fetch"]) == MAX_MESSAGES  # one message per response, as originals ask
    assert 1 < len(summary["fetch_packed"]) < MAX_MESSAGES  # packed, over several responses

    kept = summary["untrimmed"]
    assert kept["topic"] == untrimmed
    assert kept["get_head"]["first_head_id"] == 1
    assert kept["get_head"]["head_id"] == 3
    for read in ("fetch", "fetch_packed"):
        assert _heads(kept[read]) == [1, 2, 3], read
        assert set(_first_head_ids(kept[read])) == {0}, read
