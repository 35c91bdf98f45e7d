"""The Go client speaks the Push RPC of fleet sync (issue 17) as a device would: hello and
welcome, an offer answered with the hub's head, a batch acknowledged with the durable head, and
refusals in the ack that leave the stream open (a log of another origin, a batch with a gap),
against a real daemon serving as the hub.

Every extension of the contract is exercised from Go too. The Go run prints one JSON `summary`
line, which this test checks, and the daemon's own answer after it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from msgbus_core import NodeId
from msgbus_proto import pb
from msgbus_server.testing import Daemon

if TYPE_CHECKING:
    from conftest import Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build

COUNT = 10
DEVICE = "tenant/default/go-device"


def _summary(output: str) -> dict[str, Any]:
    lines = [line for line in output.splitlines() if line.startswith("summary ")]
    assert len(lines) == 1, output
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return summary


def test_go_device_pushes_its_log_and_is_refused_another_origin(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    topic = "go.push"
    with Daemon.start(tmp_path, storage=backend, node="tenant/default/hub") as hub:
        output = scenarios.run(
            go_client, "push", "-addr", hub.endpoint, "-topic", topic, "-count", str(COUNT)
        )
        stub = hub.stub()
        origin = NodeId.from_key(DEVICE)
        head = stub.GetHead(
            pb.GetHeadRequest(
                topic=topic,
                origin=pb.NodeId(
                    tenant_id=origin.tenant_id, bl_name=origin.bl_name, device_id=origin.device_id
                ),
            ),
            timeout=10,
        ).head_id
        others = list(stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads)
        assert "Traceback" not in hub.stderr_text()
    summary = _summary(output)
    assert summary["pusher"] == DEVICE
    assert summary["hub"] == "tenant/default/hub"
    assert summary["max_batch_bytes"] == 3 * 1024 * 1024
    assert summary["offered_head"] == 0
    assert (summary["ack_code"], summary["ack_head"]) == (0, COUNT)
    assert summary["other_refused"] is True
    assert summary["other_ack_code"] == 7  # PERMISSION_DENIED
    assert "--accept-relayed" in summary["other_message"]
    assert summary["gap_ack_code"] != 0
    assert summary["gap_ack_head"] == COUNT
    assert summary["again_offer_head"] == COUNT
    assert head == COUNT
    assert [h.origin.device_id for h in others if h.topic == topic] == ["go-device"]
