"""The publish paths side by side: (a) 1,000 sequential publishes, (b) 20,000 with 256 in
flight, (d) live latency at 1,000 msgs/s for 5 s, each against a fresh msgbusd (SQLite), with
the client's and the daemon's CPU per message.

    AB_STREAM=1 uv run python bench/publish_paths.py a b d   # publishes on the PublishStream
    AB_STREAM=0 uv run python bench/publish_paths.py a b d   # unary Publish / PublishBatch

Run it with PYTHONPATH pointing at another build's packages to compare builds (the figures in
bench/README.md "Where the time goes" were taken that way). Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import latency_from_payload, payload_with_timestamp
from msgbus_sdk import AsyncMsgbusClient

STREAM = os.environ.get("AB_STREAM", "1") == "1"
PAYLOAD = b"x" * 256


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) the process `pid` has used."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def connect(ep: str) -> AsyncMsgbusClient:
    """A client on the path AB_STREAM chooses (an older build without the option: its default)."""
    try:
        return await AsyncMsgbusClient.connect(ep, publish_stream=STREAM)
    except TypeError:
        return await AsyncMsgbusClient.connect(ep)


def pct(xs: list[float], p: float) -> float:
    """The `p` quantile of `xs` (seconds), in milliseconds."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3


async def scenario(
    name: str, ep: str, pid: int, mark: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run scenario `name` (a, b or d) against the daemon at `ep` whose process is `pid`.

    `mark`, when given, is called where the measured interval starts and again where it ends
    (`daemon_budget.py` samples the daemon's threads and counters there).
    """
    bus = await connect(ep)
    async with bus:
        for _ in range(50):
            await bus.publish("warm", PAYLOAD)
        if mark is not None:
            mark()
        c0, d0, t0 = time.process_time(), cpu_of(pid), time.perf_counter()
        out: dict[str, Any] = {}
        if name == "a":
            n = 1000
            lat: list[float] = []
            for _ in range(n):
                t = time.perf_counter()
                await bus.publish("a", PAYLOAD)
                lat.append(time.perf_counter() - t)
            out = {
                "rate": n / (time.perf_counter() - t0),
                "p50": pct(lat, 0.5),
                "p99": pct(lat, 0.99),
            }
        elif name == "b":
            n = 20000
            left = n

            async def w() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await bus.publish("b", PAYLOAD)

            await asyncio.gather(*(w() for _ in range(256)))
            out = {"rate": n / (time.perf_counter() - t0)}
        else:
            n = 5000
            lat = []

            async def consume() -> None:
                async for m in bus.subscribe("d", from_head_id=1):
                    lat.append(latency_from_payload(m.payload))
                    if m.head_id >= n:
                        return

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            if mark is not None:
                mark()
            c0, d0 = time.process_time(), cpu_of(pid)
            began = time.perf_counter()
            pend: set[asyncio.Future[Any]] = set()
            for i in range(n):
                d = began + i / 1000 - time.perf_counter()
                if d > 0:
                    await asyncio.sleep(d)
                f = asyncio.ensure_future(bus.publish("d", payload_with_timestamp()))
                pend.add(f)
                f.add_done_callback(pend.discard)
            await asyncio.wait_for(task, 60)
            out = {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}
        if mark is not None:
            mark()
        out["client_us"] = (time.process_time() - c0) / n * 1e6
        out["daemon_us"] = (cpu_of(pid) - d0) / n * 1e6
        return out


def main() -> None:
    """Run the scenarios named on the command line, each against a fresh daemon."""
    res: dict[str, Any] = {}
    for name in sys.argv[1:]:
        d = tempfile.mkdtemp()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "msgbus_server",
                "--listen",
                f"127.0.0.1:{port}",
                "--data",
                f"{d}/db.sqlite",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(0.3)
            res[name] = asyncio.run(scenario(name, f"127.0.0.1:{port}", proc.pid))
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
