"""Scenario (a) from a compiled client: the Python SDK and grpc-go against the same msgbusd.

A sequential durable publish costs the client's share and the daemon's. This script separates
them: against one fresh msgbusd (SQLite, TCP loopback, 256-byte payloads) it runs, round by
round and interleaved, the Python SDK's sequential publishes (the asyncio client on its
default PublishStream) and the Go interop client's `publish-latency` (grpc-go on the same
PublishStream, each publish awaited before the next), and prints per round p50 / p99, the
client's CPU and the daemon's CPU per publish. What the Go client saves is what a native
client path saves; what is left is the daemon's.

    uv run pytest tests/interop/test_go_publish_latency.py   # builds the Go client once
    uv run python bench/native_client.py --rounds 3 --count 2000

Prints one JSON line per round and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    free_port,
    percentile,
    process_cpu_seconds,
    stop_process,
    wait_for_port,
)
from msgbus_sdk import AsyncMsgbusClient

ROOT = Path(__file__).resolve().parent.parent
GO_CLIENT = ROOT / "tests" / "interop" / ".cache" / "bin" / "msgbus-interop-go"
PAYLOAD = b"x" * 256
WARM = 50


async def python_round(endpoint: str, daemon_pid: int, topic: str, count: int) -> dict[str, Any]:
    """`count` sequential publishes from the asyncio SDK, after WARM unmeasured ones."""
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        for _ in range(WARM):
            await bus.publish(topic, PAYLOAD)
        latencies: list[float] = []
        client0, daemon0, began = (
            time.process_time(),
            process_cpu_seconds(daemon_pid),
            time.perf_counter(),
        )
        for _ in range(count):
            start = time.perf_counter()
            await bus.publish(topic, PAYLOAD)
            latencies.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        client_s = time.process_time() - client0
        daemon_s = process_cpu_seconds(daemon_pid) - daemon0
    return {
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "rate": count / elapsed,
        "client_cpu_us": client_s / count * 1e6,
        "daemon_cpu_us": daemon_s / count * 1e6,
    }


def go_round(endpoint: str, daemon_pid: int, topic: str, count: int) -> dict[str, Any]:
    """`count` sequential publishes from the Go client (its own CPU figure, the daemon's here)."""
    daemon0 = process_cpu_seconds(daemon_pid)
    result = subprocess.run(
        [str(GO_CLIENT), "publish-latency", "-addr", endpoint, "-topic", topic,
         "-count", str(count), "-warm", str(WARM), "-size", str(len(PAYLOAD))],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    daemon_s = process_cpu_seconds(daemon_pid) - daemon0
    lines = [line for line in result.stdout.splitlines() if line.startswith("summary ")]
    if result.returncode != 0 or len(lines) != 1:
        raise SystemExit(f"the Go client failed:\n{result.stdout}{result.stderr}")
    summary: dict[str, Any] = json.loads(lines[0].removeprefix("summary "))
    return {
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "rate": summary["rate"],
        "client_cpu_us": summary["client_cpu_us"],
        # Includes the Go client's WARM publishes and its connection set-up, a small share.
        "daemon_cpu_us": daemon_s / (count + WARM) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=2000, help="measured publishes per client")
    args = parser.parse_args()
    if not GO_CLIENT.is_file():
        print(f"no Go client at {GO_CLIENT}: run the test in this script's usage first",
              file=sys.stderr)  # fmt: skip
        return 2
    results: dict[str, list[dict[str, Any]]] = {"python sdk": [], "grpc-go": []}
    with tempfile.TemporaryDirectory(prefix="msgbus-native-") as directory:
        port = free_port()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "msgbus_server", "--listen", f"127.0.0.1:{port}",
             "--data", f"{directory}/bench.sqlite"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port)
            endpoint = f"127.0.0.1:{port}"
            for round_ in range(args.rounds):
                # Alternate who goes first, so that neither always meets the warmer machine.
                order = ["python sdk", "grpc-go"] if round_ % 2 == 0 else ["grpc-go", "python sdk"]
                for client in order:
                    topic = f"native.{client.replace(' ', '-')}.{round_}"
                    if client == "grpc-go":
                        figures = go_round(endpoint, daemon.pid, topic, args.count)
                    else:
                        figures = asyncio.run(python_round(endpoint, daemon.pid, topic, args.count))
                    results[client].append(figures)
                    print(json.dumps({"round": round_, "client": client, **figures}), flush=True)
        finally:
            stop_process(daemon)
    print()
    print(
        "| client | p50 ms | p99 ms | publishes/s | client CPU µs/publish | daemon CPU µs/publish |"
    )
    print("|---|---|---|---|---|---|")
    for client, rounds in results.items():
        cells = [
            ", ".join(f"{r[key]:{fmt}}" for r in rounds)
            for key, fmt in (
                ("p50_ms", ".2f"),
                ("p99_ms", ".2f"),
                ("rate", ",.0f"),
                ("client_cpu_us", ".0f"),
                ("daemon_cpu_us", ".0f"),
            )
        ]
        print(f"| {client} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
