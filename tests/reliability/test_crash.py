"""Crash consistency: SIGKILL under load at random moments, restart, and check everything.

Each round loads the daemon (16 publishers, FIFO enqueue/ack, DeleteRange, a peer syncing in),
SIGKILLs it after a random 0.3-1.5 s, restarts it on the same file and checks: every acknowledged
publish is there with its id, head_id, payload and headers (or erased, when an acknowledged or
in-flight delete covers it); no log has a gap or a duplicate; every acknowledged FIFO enqueue is
there unless acked, and no acked one is; the sync state reads back; the daemon is ready quickly.
`scripts/crash_soak.py` runs the same rounds (`scripts/workloads/crash.py`) for as long as you like.

Startup bound. The daemon's own startup (store open, recovery, server start: what it logs as
"startup N ms") must be under 1 s, strictly. Process start to the first SERVING Health is
reported but asserted only under STARTUP_LIMIT_S: it is dominated by the Python interpreter
importing grpc and protobuf (about 0.7-0.9 s of CPU on an idle 2-core box), and under
`pytest -n auto` another worker competes for the same two cores, so 1 s there would be a
timing assertion on the CI machine's load, not on msgbus.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from workloads.crash import crash_rounds, seed_peer

from msgbus_server.testing import Daemon

ROUNDS_PER_BACKEND = 6
"""12 rounds in the suite over both backends (the issue asks for at least 10)."""
STARTUP_LIMIT_S = 5.0
DAEMON_STARTUP_LIMIT_MS = 1000


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Daemon]:
    """The peer the daemon under test syncs from; it is never killed."""
    with Daemon.start(tmp_path / "peer", node="tenant/default/peer") as daemon:
        seed_peer(daemon, 3000)
        yield daemon


def test_sigkill_under_load_loses_nothing_acknowledged(
    tmp_path: Path, backend: str, peer: Daemon
) -> None:
    seed = int(os.environ.get("MSGBUS_CRASH_SEED", random.randrange(2**32)))
    print(f"seed {seed} (set MSGBUS_CRASH_SEED to replay the kill moments)")
    args = ["--peer", f"{peer.endpoint}={peer.node.key}", "--sync-interval-ms", "100"]
    args += ["--sync-batch-limit", "50"]
    with Daemon.start(tmp_path / "node", storage=backend, extra_args=args) as daemon:
        try:
            ledger = crash_rounds(daemon, peer, ROUNDS_PER_BACKEND, seed)
        except AssertionError as error:
            raise AssertionError(f"seed {seed}: {error}") from error
        print(ledger.summary())
        assert ledger.rounds == ROUNDS_PER_BACKEND
        assert ledger.messages_checked > 0
        assert ledger.fifo_checked > 0
        assert ledger.peer_rows_checked > 0
        assert max(ledger.startup_ms_reported) < DAEMON_STARTUP_LIMIT_MS, ledger.summary()
        assert max(ledger.startup_s) < STARTUP_LIMIT_S, ledger.summary()
        print(f"median startup to Health: {statistics.median(ledger.startup_s):.3f} s")
        assert "Traceback" not in daemon.stderr_text()
