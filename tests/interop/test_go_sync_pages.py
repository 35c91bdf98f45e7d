"""The Go client pages through ListPeerSyncStates (the paging extension of msgbus.v1).

Every later extension of the contract is exercised from Go too: with page_size 1, the pages
must add up to exactly the unpaged answer that original clients get.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from msgbus_server.testing import wait_until
from msgbus_testkit.logs import publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import log_state, start_node

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build


def test_go_pages_of_one_state_add_up_to_the_unpaged_answer(
    go_client: Path, backend: str, tmp_path: Path
) -> None:
    b_id = node_id("b")
    topics = ("alpha", "beta", "gamma", "delta", "épsilon")
    with start_node(tmp_path, "b", storage=backend) as b:
        for count, topic in enumerate(topics, start=1):
            publish_many(b.stub(), topic, count)
        with start_node(tmp_path, "a", storage=backend, peers=[(b.endpoint, b_id.key)]) as a:
            stub = a.stub()
            for count, topic in enumerate(topics, start=1):
                wait_until(
                    lambda: (
                        (s := log_state(stub, b.endpoint, topic, b_id))  # noqa: B023
                        and s.last_synced_head == count  # noqa: B023
                    ),
                    message=f"A's state of {topic}",
                )
            # Settled: B is idle, so A's passes write nothing and the listing stays as it is.
            result = subprocess.run(
                [str(go_client), "sync-pages", "-addr", a.endpoint, "-min-states", "6"],
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, output
            assert "PASS sync-pages" in result.stdout, output
            assert "6 pages add up to the unpaged answer" in output
            assert "INVALID_ARGUMENT naming page_token" in output
