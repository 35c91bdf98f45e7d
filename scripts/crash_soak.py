#!/usr/bin/env python3
"""Crash soak: SIGKILL a loaded msgbusd again and again, and check everything after each restart.

The long version of `tests/reliability/test_crash.py` (same load, same checks, shared code in
`scripts/workloads/crash.py`): 16 publishers, FIFO enqueue/ack, DeleteRange and a peer
syncing in; after every restart, every acknowledged publish, delete and FIFO operation is held
to account, logs are checked for gaps and duplicates, and startup is timed.

    uv run python scripts/crash_soak.py --rounds 200 --backend sqlite
    uv run python scripts/crash_soak.py --duration 600 --backend duckdb --seed 7

Stops at whichever of --rounds / --duration comes first; exits 1 on the first violation.
Type-check with `MYPYPATH=scripts uv run mypy scripts` (as scripts/typecheck.sh does).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from workloads.crash import (
    CrashLedger,
    restart_and_check,
    run_round,
    seed_peer,
    wait_for_sync_state,
)

from msgbus_server.testing import Daemon


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds, at most")
    parser.add_argument("--backend", choices=("sqlite", "duckdb"), default="sqlite")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--min-kill", type=float, default=0.3, help="earliest kill, seconds")
    parser.add_argument("--max-kill", type=float, default=3.0, help="latest kill, seconds")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"crash soak: backend={args.backend} seed={seed}", flush=True)
    ledger = CrashLedger()
    deadline = time.monotonic() + args.duration
    with tempfile.TemporaryDirectory(prefix="crash-soak-") as tmp:
        root = Path(tmp)
        with Daemon.start(root / "peer", node="tenant/default/peer") as peer:
            seed_peer(peer, 3000)
            extra = ["--peer", f"{peer.endpoint}={peer.node.key}", "--sync-interval-ms", "100"]
            with Daemon.start(root / "node", storage=args.backend, extra_args=extra) as daemon:
                wait_for_sync_state(daemon.stub(), peer)
                while ledger.rounds < args.rounds and time.monotonic() < deadline:
                    fifo = asyncio.run(
                        run_round(
                            daemon,
                            peer,
                            ledger,
                            rng,
                            min_kill_s=args.min_kill,
                            max_kill_s=args.max_kill,
                        )
                    )
                    try:
                        restart_and_check(daemon, peer, ledger, fifo)
                    except AssertionError as error:
                        print(f"round {ledger.rounds} FAILED: {error}", flush=True)
                        print(daemon.stderr_text()[-4000:], file=sys.stderr)
                        return 1
                    print(f"round {ledger.rounds} ok: {ledger.summary()}", flush=True)
    print(f"survived: {ledger.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
