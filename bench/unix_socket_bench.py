"""Unix socket against TCP loopback: the latency of one call, on one msgbusd serving both.

Not a test: run it by hand and copy the table into the README ("Authorization").

    uv run python bench/unix_socket_bench.py             # 5 rounds of 2,000 calls per case
    uv run python bench/unix_socket_bench.py --quick     # a smoke run

One daemon (SQLite, in a temporary directory) listens on 127.0.0.1 and on a Unix socket; a
second one, started after the first is stopped, adds a policy (an allow rule for this uid and
anonymous callers, after a deny rule that matches nothing), to show what deciding costs. One
blocking SDK client per listener makes the calls one at a time, 256-byte payloads:

- Health: the floor of one round trip (no store);
- GetHead: a read on the reader threads;
- Publish: a durable write (its transaction commits with fsync before the answer).

The two transports take turns every 50 calls, so a noisy neighbour hits both alike; each line is
the median of the rounds' p50 and p99 (microseconds), Publish with a quarter of the calls. The
machine is shared: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench_common import PAYLOAD_SIZE, free_port, percentile
from msgbus_sdk import MsgbusClient

POLICY = f"""
[policy]
[[policy.rule]]
name = "nobody"
callers = ["uid:{2**31 - 2}"]
deny = ["publish", "read"]
[[policy.rule]]
name = "this user and loopback"
callers = ["uid:{os.getuid()}", "anonymous"]
allow = ["publish", "read"]
"""


@contextlib.contextmanager
def daemon(directory: Path, *, policy: bool) -> Iterator[tuple[str, str]]:
    """A msgbusd on TCP loopback and a Unix socket; its two targets."""
    port = free_port()
    socket_path = directory / "msgbusd.sock"
    args = [
        sys.executable,
        "-m",
        "msgbus_server",
        "--listen",
        f"127.0.0.1:{port}",
        "--listen",
        f"unix://{socket_path}",
        "--data",
        str(directory / "bench.sqlite"),
    ]
    if policy:
        (directory / "msgbusd.toml").write_text(POLICY)
        args += ["--config", str(directory / "msgbusd.toml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    with (directory / "msgbusd.stderr").open("ab") as stderr:
        process = subprocess.Popen(args, env=env, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        targets = (f"127.0.0.1:{port}", f"unix://{socket_path}")
        deadline = time.monotonic() + 30
        while True:
            try:
                for target in targets:
                    with MsgbusClient.connect(target, timeout=1) as bus:
                        bus.health()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((directory / "msgbusd.stderr").read_text()) from None
                time.sleep(0.05)
        yield targets
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


CHUNK = 50
"""Calls in a row on one transport before the other takes its turn."""


def timed(call: Callable[[], object], count: int) -> list[float]:
    """Seconds each of `count` calls took."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _action(bus: MsgbusClient, call: str, payload: bytes) -> Callable[[], object]:
    """One call of the kind `call` on `bus`."""
    if call == "Health":
        return bus.health
    if call == "GetHead":
        return lambda: bus.get_head("bench.unix")
    return lambda: bus.publish("bench.unix", payload)


def measure(
    targets: tuple[str, str], rounds: int, count: int
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Per (call, transport): the (p50, p99) of each round, in microseconds.

    Within a round the transports take turns every CHUNK calls, so both see the same noise.
    """
    payload = b"x" * PAYLOAD_SIZE
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    clients = {
        name: MsgbusClient.connect(target)
        for name, target in zip(("tcp", "unix"), targets, strict=True)
    }
    try:
        for client in clients.values():
            client.publish("bench.unix", payload)
        for _ in range(rounds):
            for call in ("Health", "GetHead", "Publish"):
                calls = count if call != "Publish" else max(count // 4, CHUNK)
                samples: dict[str, list[float]] = {name: [] for name in clients}
                for bus in clients.values():
                    timed(_action(bus, call, payload), CHUNK)  # warm up
                for _ in range(max(calls // CHUNK, 1)):
                    for name, bus in clients.items():
                        samples[name] += timed(_action(bus, call, payload), CHUNK)
                for name, taken in samples.items():
                    results.setdefault((call, name), []).append(
                        (percentile(taken, 0.5) * 1e6, percentile(taken, 0.99) * 1e6)
                    )
    finally:
        for client in clients.values():
            client.close()
    return results


def main() -> None:
    """Run both daemons and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="1 round of 200 calls")
    args = parser.parse_args()
    rounds, count = (1, 200) if args.quick else (args.rounds, args.calls)
    print(
        f"# {datetime.date.today().isoformat()}, {os.cpu_count()} cores, {rounds} x {count} calls"
    )
    print("| call | policy | TCP loopback p50 / p99 µs | Unix socket p50 / p99 µs | Unix/TCP p50 |")
    print("|---|---|---|---|---|")
    for policy in (False, True):
        directory = Path(tempfile.mkdtemp(prefix="mb-bench-"))
        try:
            with daemon(directory, policy=policy) as targets:
                results = measure(targets, rounds, count)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        for call in ("Health", "GetHead", "Publish"):
            line = [call, "yes" if policy else "none"]
            p50s = {}
            for name in ("tcp", "unix"):
                rows = results[(call, name)]
                p50 = statistics.median(r[0] for r in rows)
                p99 = statistics.median(r[1] for r in rows)
                p50s[name] = p50
                line.append(f"{p50:.0f} / {p99:.0f}")
            line.append(f"{p50s['unix'] / p50s['tcp']:.2f}")
            print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
