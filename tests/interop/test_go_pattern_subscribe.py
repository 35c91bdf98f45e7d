"""The Go client follows `telemetry` of several origins with one pattern Subscribe (issue 19).

Three origin daemons publish different numbers of messages; a hub pulls them (--peer) and
publishes its own, also on a deeper topic. The Go client (tests/interop/go/pattern_subscribe.go)
subscribes with topic_pattern `telemetry*` (`*` crosses dots, as in every msgbus glob), checks
that each response carries one log and each log arrives in order with no gap and no duplicate,
resumes every log with resume_after, and checks the refusals.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from msgbus_proto import pb
from msgbus_server.testing import wait_until
from msgbus_testkit.peers import start_node

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

COUNTS = {"dev0": 12, "dev1": 3, "dev2": 30}
HUB_OWN = 5
HUB_DEEP = 4  # on telemetry.cpu.load: `telemetry*` matches it, dots and all


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_subscribes_to_a_topic_of_every_origin_in_per_log_order(
    go_client: Path, tmp_path: Path, scenarios: Scenarios
) -> None:
    with ExitStack() as stack:
        devices = [stack.enter_context(start_node(tmp_path, name)) for name in COUNTS]
        for device, count in zip(devices, COUNTS.values(), strict=True):
            entries = [pb.PublishRequest(topic="telemetry", payload=b"x")] * count
            device.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
            device.stub().Publish(pb.PublishRequest(topic="other", payload=b"x"), timeout=30)
        hub = stack.enter_context(
            start_node(tmp_path, "hub", peers=[(d.endpoint, d.node.key) for d in devices])
        )
        entries = [pb.PublishRequest(topic="telemetry", payload=b"hub")] * HUB_OWN
        hub.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
        deep = [pb.PublishRequest(topic="telemetry.cpu.load", payload=b"hub")] * HUB_DEEP
        hub.stub().PublishBatch(pb.PublishBatchRequest(entries=deep), timeout=30)
        wanted = {
            f"telemetry {d.node.key}": c for d, c in zip(devices, COUNTS.values(), strict=True)
        }
        wanted[f"telemetry {hub.node.key}"] = HUB_OWN
        wanted[f"telemetry.cpu.load {hub.node.key}"] = HUB_DEEP

        def synced() -> bool:
            heads = hub.stub().ListHeads(pb.ListHeadsRequest(), timeout=10).heads
            held = {
                f"{h.topic} {h.origin.tenant_id}/{h.origin.bl_name}/{h.origin.device_id}": h.head_id
                for h in heads
            }
            return all(held.get(key) == count for key, count in wanted.items())

        wait_until(synced, message="the hub holding every device's telemetry", timeout=60)
        summary = _summary(
            scenarios.run(
                go_client,
                "pattern-subscribe",
                "-addr",
                hub.endpoint,
                "-pattern",
                "telemetry*",
                "-messages",
                str(sum(wanted.values())),
                "-logs",
                str(len(wanted)),
            )
        )
        assert "Traceback" not in hub.stderr_text()
    assert summary["logs"] == wanted
    assert summary["resumed"] == dict.fromkeys(wanted, 2)
    assert set(summary["refusals"].values()) == {"InvalidArgument field-named"}
