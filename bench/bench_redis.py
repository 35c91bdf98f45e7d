"""Redis 7 as a benchmark target, `appendfsync always`, driven through redis-py's asyncio client.

Each scenario runs against a fresh `redis-server` (Debian's package: `apt-get install
redis-server`) with the append-only file on and `appendfsync always`, so a write is answered only
after its fsync, the promise msgbus makes; RDB snapshots are off. The log is a Redis stream
(XADD, XRANGE, XREAD BLOCK), the closest Redis has to an msgbus log. Fastest client paths: one
XADD per round trip for (a); pipelines of 256 XADDs for (b) and for filling; XRANGE pages of
1,000 for (c); XREAD BLOCK for (d). Catch-up is a replica started with `--replicaof` (a full
resynchronisation: the leader's RDB, loaded and rewritten into the replica's own append-only
file), timed until the replica's XLEN is N; the leader runs with `repl-diskless-sync-delay 0`
(its default waits 5 s for more replicas to share the snapshot, idle time with one replica).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis.asyncio as redis

from bench_common import (
    PAYLOAD_SIZE,
    free_port,
    latency_from_payload,
    payload_with_timestamp,
    stop_process,
)

STREAM = "bench.events"
FIELD = "p"
PIPELINE = 256


def redis_server_binary() -> str:
    """The redis-server executable (Debian's `redis-server` package)."""
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found: `apt-get install redis-server`")
    return found


class RedisServer:
    """One redis-server process with AOF and `appendfsync always`."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, replica_of: int | None = None) -> None:
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            # Redis waits 5 s by default before a full resynchronisation, for more replicas to
            # share one snapshot; with one replica that is only idle time.
            "--repl-diskless-sync-delay",
            "0",
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=log)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def connect(self) -> redis.Redis:
        # A blocking pool: (d)'s publishes wait for a connection when the server falls behind,
        # instead of failing with "Too many connections" on a loaded machine.
        pool = redis.BlockingConnectionPool(
            host="127.0.0.1", port=self.port, max_connections=256, timeout=None
        )
        client = redis.Redis(connection_pool=pool)
        deadline = time.monotonic() + 20
        while True:
            try:
                await client.ping()
                return client
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class RedisTarget:
    """The scenarios, implemented for Redis streams with `appendfsync always`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.name = "redis appendfsync=always"
        self.servers: list[RedisServer] = []
        self._count = 0

    def _server(self, role: str) -> RedisServer:
        self._count += 1
        server = RedisServer(self.workdir, f"{role}-{self._count}")
        self.servers.append(server)
        return server

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.process and s.process.poll() is None]

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()

    async def _fresh(self) -> tuple[RedisServer, redis.Redis]:
        self.close()
        server = self._server("leader")
        server.start()
        return server, await server.connect()

    async def sequential_publish(self, count: int) -> list[float]:
        _, client = await self._fresh()
        payload = b"x" * PAYLOAD_SIZE
        latencies = []
        for _ in range(count):
            began = time.perf_counter()
            await client.xadd(STREAM, {FIELD: payload})
            latencies.append(time.perf_counter() - began)
        await client.aclose()
        return latencies

    async def _pipelined(self, client: redis.Redis, count: int, in_flight: int) -> None:
        payload = b"x" * PAYLOAD_SIZE
        for start in range(0, count, in_flight):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(in_flight, count - start)):
                pipe.xadd(STREAM, {FIELD: payload})
            await pipe.execute()

    async def concurrent_publish(self, count: int, in_flight: int) -> float:
        _, client = await self._fresh()
        began = time.perf_counter()
        await self._pipelined(client, count, in_flight)
        elapsed = time.perf_counter() - began
        await client.aclose()
        return elapsed

    async def replay(self, count: int) -> float:
        _, client = await self._fresh()
        await self._pipelined(client, count, PIPELINE)
        received = 0
        start = "-"
        began = time.perf_counter()
        while received < count:
            page: Any = await client.xrange(STREAM, min=start, count=1000)
            received += len(page)
            start = "(" + page[-1][0].decode()
        elapsed = time.perf_counter() - began
        await client.aclose()
        return elapsed

    async def live_latency(self, rate: int, seconds: float) -> list[float]:
        server, client = await self._fresh()
        reader = await server.connect()
        total = int(rate * seconds)
        latencies: list[float] = []

        async def consume() -> None:
            last = "0-0"
            while len(latencies) < total:
                answer: Any = await reader.xread({STREAM: last}, block=0, count=1000)
                for _, entries in answer:
                    for entry_id, fields in entries:
                        latencies.append(latency_from_payload(fields[FIELD.encode()]))
                        last = entry_id

        consumer = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        pending: set[asyncio.Future[Any]] = set()
        began = time.perf_counter()
        for index in range(total):
            delay = began + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(client.xadd(STREAM, {FIELD: payload_with_timestamp()}))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.wait_for(consumer, timeout=60)
        await reader.aclose()
        await client.aclose()
        return latencies

    async def _wait_length(self, client: redis.Redis, count: int) -> None:
        deadline = time.monotonic() + 600
        while True:
            try:
                if await client.xlen(STREAM) >= count:
                    return
            except redis.BusyLoadingError:
                pass  # the replica is still loading the leader's snapshot
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not catch up")
            await asyncio.sleep(0.01)

    async def catch_up(self, count: int) -> float:
        leader, client = await self._fresh()
        await self._pipelined(client, count, PIPELINE)
        await client.aclose()
        began = time.perf_counter()
        replica = self._server("replica")
        replica.start(replica_of=leader.port)
        replica_client = await replica.connect()
        await self._wait_length(replica_client, count)
        elapsed = time.perf_counter() - began
        await replica_client.aclose()
        return elapsed

    async def suspended_follower(self, count: int) -> float:
        leader, client = await self._fresh()
        replica = self._server("replica")
        replica.start(replica_of=leader.port)
        replica_client = await replica.connect()
        await self._wait_length(replica_client, 0)
        await replica_client.aclose()
        os.kill(replica.pid, signal.SIGSTOP)
        await self._pipelined(client, count, PIPELINE)
        await client.aclose()
        began = time.perf_counter()
        os.kill(replica.pid, signal.SIGCONT)
        replica_client = await replica.connect()
        await self._wait_length(replica_client, count)
        elapsed = time.perf_counter() - began
        await replica_client.aclose()
        return elapsed
