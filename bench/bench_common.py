"""Measurement helpers shared by the benchmark targets: percentiles, RSS, CPU accounting."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PAYLOAD_SIZE = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Poll until a server accepts connections on 127.0.0.1:`port`; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing accepted connections on port {port} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a server the benchmark started (resumed first, in case it is suspended)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile of `samples` (nearest rank)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command field: state is fields[0]; utime and stime are fields 11 and 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICKS


@dataclass
class CpuWatch:
    """The CPU of a scenario: the client's (this process), the daemons', and everyone else's."""

    pids: list[int] = field(default_factory=list)
    _busy: float = 0.0
    _start: dict[int, float] = field(default_factory=dict)
    _wall: float = 0.0
    client_s: float = 0.0
    """CPU seconds this process (the benchmark's client) used between `start` and `stop`."""
    daemon_s: float = 0.0
    """CPU seconds the daemons used between `start` and `stop` (a daemon started meanwhile
    counts from its start, so its start-up is included)."""

    def _cpu(self, pid: int) -> float:
        return process_cpu_seconds(pid)

    def start(self, pids: list[int]) -> None:
        """Begin measuring; `pids` are the daemons and servers this run started."""
        self.pids = pids
        self._busy = machine_busy_seconds()
        self._start = {pid: self._cpu(pid) for pid in {os.getpid(), *pids}}
        self._wall = time.monotonic()

    def stop(self) -> float:
        """Average number of cores others used since `start` (0.0 = a quiet machine).

        Also sets `client_s` and `daemon_s`. Call it while the daemons still run: the CPU of a
        process that has exited is not counted.
        """
        wall = max(time.monotonic() - self._wall, 1e-9)
        me = os.getpid()
        self.client_s = self._cpu(me) - self._start.get(me, 0.0)
        self.daemon_s = sum(
            self._cpu(pid) - self._start.get(pid, 0.0) for pid in set(self.pids) - {me}
        )
        others = (machine_busy_seconds() - self._busy) - (self.client_s + self.daemon_s)
        return max(others, 0.0) / wall


def payload_with_timestamp() -> bytes:
    """A 256-byte payload that starts with the send time, for end-to-end latency."""
    stamp = str(time.perf_counter_ns()).encode()
    return stamp + b" " + b"x" * (PAYLOAD_SIZE - len(stamp) - 1)


def latency_from_payload(payload: bytes) -> float:
    """Seconds since the payload was made (same process and clock)."""
    sent = int(payload.split(b" ", 1)[0])
    return (time.perf_counter_ns() - sent) / 1e9


def summary(samples: list[float]) -> dict[str, float]:
    """p50, p99 and mean of latencies, in milliseconds."""
    return {
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "mean_ms": statistics.fmean(samples) * 1e3 if samples else float("nan"),
    }
