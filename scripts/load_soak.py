#!/usr/bin/env python3
"""Load soak: the full-length versions of `tests/reliability/test_load.py`.

    uv run python scripts/load_soak.py                      # everything, issue 8's sizes
    uv run python scripts/load_soak.py fanout --seconds 300 --rate 500
    uv run python scripts/load_soak.py slow --messages 100000 --read-seconds 60
    uv run python scripts/load_soak.py cycles --cycles 10000

- fanout: 500 subscribers on 50 logs while publishers run; every subscriber must receive every
  message of its log in order; reports the daemon's peak RSS (VmHWM) and fails above 300 MB.
- slow: one subscriber reads one message per second for a minute while 100,000 messages are
  published; it must never be cut off and the daemon's RSS must stay within 20 MB.
- cycles: 10,000 subscribe/disconnect cycles; RSS after warm-up vs at the end (within 10 MB).

Shared code: `scripts/workloads/load.py`. Exits 1 when a limit is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from workloads.load import fanout, slow_subscriber, subscribe_cycles

from msgbus_server.testing import Daemon

MIB = 1024


async def run(args: argparse.Namespace) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="load-soak-") as tmp:
        if args.which in ("all", "fanout"):
            with Daemon.start(Path(tmp) / "fanout", storage=args.backend) as daemon:
                fan = await fanout(
                    daemon,
                    subscribers=args.subscribers,
                    logs=args.logs,
                    seconds=args.seconds,
                    rate=args.rate,
                )
            ok = fan.peak_rss_kib < 300 * MIB
            failures += not ok
            print(f"fanout {'ok' if ok else 'FAILED'}: {fan}", flush=True)
        if args.which in ("all", "slow"):
            with Daemon.start(Path(tmp) / "slow", storage=args.backend) as daemon:
                slow = await slow_subscriber(
                    daemon, messages=args.messages, read_seconds=args.read_seconds
                )
            ok = slow.growth_kib < 20 * MIB
            failures += not ok
            print(
                f"slow {'ok' if ok else 'FAILED'}: published={slow.published} read={slow.read} "
                f"rss_growth_kib={slow.growth_kib} samples={slow.rss_kib}",
                flush=True,
            )
        if args.which in ("all", "cycles"):
            with Daemon.start(Path(tmp) / "cycles", storage=args.backend) as daemon:
                cycles = await subscribe_cycles(daemon, cycles=args.cycles)
            ok = cycles.growth_kib < 10 * MIB
            failures += not ok
            print(f"cycles {'ok' if ok else 'FAILED'}: {cycles}", flush=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", nargs="?", choices=("all", "fanout", "slow", "cycles"), default="all"
    )
    parser.add_argument("--backend", choices=("sqlite", "duckdb"), default="sqlite")
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--logs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0, help="fan-out duration")
    parser.add_argument("--rate", type=float, default=200.0, help="fan-out publishes per second")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--read-seconds", type=float, default=60.0)
    parser.add_argument("--cycles", type=int, default=10_000)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
