"""msgbusd as a benchmark target, driven through the public SDK as an application would.

Every scenario starts fresh daemons (real processes, real database files) with the
`msgbus_server.testing` harness and talks to them through `msgbus_sdk.AsyncMsgbusClient`, with
its default (fastest) paths: `publish` as the SDK sends it by default, `publish_batch` to fill,
`subscribe` to replay. With `unix=True` the client reaches the daemon over its Unix socket
listener (`--listen unix:PATH`) instead of loopback TCP; peers still sync over TCP. Peers run
with default sync flags: catch-up (e) and (f) are what a fresh deployment gets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from bench_common import PAYLOAD_SIZE, latency_from_payload, payload_with_timestamp
from msgbus_sdk import AsyncMsgbusClient, MessageEnvelope
from msgbus_server.testing import Daemon

TOPIC = "bench.events"
SYNC_ARGS: list[str] = []
"""Default flags: nobody tunes --sync-batch-limit or --sync-interval-ms for (e) and (f)."""


class MsgbusTarget:
    """The scenarios, implemented for msgbusd with one storage backend."""

    def __init__(self, workdir: Path, storage: str, *, unix: bool = False) -> None:
        self.workdir = workdir
        self.storage = storage
        self.unix = unix
        self.name = f"msgbus {storage}" + (" unix" if unix else "")
        self.daemons: list[Daemon] = []
        self._count = 0

    def pids(self) -> list[int]:
        return [d.pid for d in self.daemons if d.poll() is None]

    def close(self) -> None:
        for daemon in self.daemons:
            if daemon.poll() is None:
                daemon.signal(signal.SIGCONT)
                try:
                    daemon.stop(timeout=60)
                except TimeoutError:  # a daemon still draining a backlog: the next run needs
                    daemon.kill()  # the machine, not its clean exit
        self.daemons.clear()

    def _daemon(self, name: str, extra_args: list[str] | None = None) -> Daemon:
        self._count += 1
        directory = self.workdir / f"{name}-{self._count}"
        listen = ["--listen", f"unix:{directory / 'msgbusd.sock'}"] if self.unix else []
        daemon = Daemon.start(
            directory,
            storage=self.storage,
            node=f"tenant/bench/{name}",
            extra_args=[*listen, *(extra_args or [])],
        )
        self.daemons.append(daemon)
        return daemon

    def _client_target(self, daemon: Daemon) -> str:
        """Where the benchmark's client connects: the Unix socket or loopback TCP."""
        return f"unix:{daemon.data_dir / 'msgbusd.sock'}" if self.unix else daemon.endpoint

    async def _fresh(self) -> tuple[Daemon, AsyncMsgbusClient]:
        self.close()
        daemon = self._daemon("leader")
        return daemon, await AsyncMsgbusClient.connect(self._client_target(daemon))

    async def sequential_publish(self, count: int) -> list[float]:
        _, client = await self._fresh()
        payload = b"x" * PAYLOAD_SIZE
        latencies = []
        async with client:
            for _ in range(count):
                began = time.perf_counter()
                await client.publish(TOPIC, payload)
                latencies.append(time.perf_counter() - began)
        return latencies

    async def _publish_concurrently(
        self, client: AsyncMsgbusClient, count: int, in_flight: int
    ) -> None:
        payload = b"x" * PAYLOAD_SIZE
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await client.publish(TOPIC, payload)

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    async def concurrent_publish(self, count: int, in_flight: int) -> float:
        _, client = await self._fresh()
        async with client:
            began = time.perf_counter()
            await self._publish_concurrently(client, count, in_flight)
            return time.perf_counter() - began

    async def _fill(self, client: AsyncMsgbusClient, count: int) -> None:
        publish_batch = getattr(client, "publish_batch", None)
        if publish_batch is None:
            await self._publish_concurrently(client, count, 256)
            return
        payload = b"x" * PAYLOAD_SIZE
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            await publish_batch([(TOPIC, payload)] * size)

    async def replay(self, count: int) -> float:
        _, client = await self._fresh()
        async with client:
            await self._fill(client, count)
            began = time.perf_counter()
            async for message in client.subscribe(TOPIC, from_head_id=1, replay_limit=1000):
                if message.head_id >= count:
                    break
            return time.perf_counter() - began

    async def live_latency(self, rate: int, seconds: float) -> list[float]:
        _, client = await self._fresh()
        total = int(rate * seconds)
        latencies: list[float] = []
        async with client:

            async def consume() -> None:
                async for message in client.subscribe(TOPIC, from_head_id=1):
                    latencies.append(latency_from_payload(message.payload))
                    if message.head_id >= total:
                        return

            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0.2)  # let the subscription reach its live phase first
            pending: set[asyncio.Future[MessageEnvelope]] = set()
            began = time.perf_counter()
            for index in range(total):
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.ensure_future(client.publish(TOPIC, payload_with_timestamp()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.wait_for(consumer, timeout=60)
        return latencies

    async def _wait_head(self, client: AsyncMsgbusClient, origin: str, count: int) -> None:
        deadline = time.monotonic() + 600
        while (await client.get_head(TOPIC, origin=origin)).head_id < count:
            if time.monotonic() > deadline:
                raise TimeoutError("the follower did not catch up")
            await asyncio.sleep(0.01)

    async def catch_up(self, count: int) -> float:
        leader, client = await self._fresh()
        async with client:
            await self._fill(client, count)
        began = time.perf_counter()
        follower = self._daemon("follower", ["--peer", leader.endpoint, *SYNC_ARGS])
        follower_target = self._client_target(follower)
        async with await AsyncMsgbusClient.connect(follower_target) as follower_client:
            await self._wait_head(follower_client, leader.node.key, count)
        return time.perf_counter() - began

    async def suspended_follower(self, count: int) -> float:
        leader, client = await self._fresh()
        follower = self._daemon("follower", ["--peer", leader.endpoint, *SYNC_ARGS])
        os.kill(follower.pid, signal.SIGSTOP)
        async with client:
            await self._fill(client, count)
        began = time.perf_counter()
        os.kill(follower.pid, signal.SIGCONT)
        async with await AsyncMsgbusClient.connect(
            self._client_target(follower)
        ) as follower_client:
            await self._wait_head(follower_client, leader.node.key, count)
        return time.perf_counter() - began
