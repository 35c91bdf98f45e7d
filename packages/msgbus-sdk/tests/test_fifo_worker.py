"""The SDK's FIFO lease methods and its worker helper, on both clients, against a real daemon."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from msgbus_sdk import (
    AsyncJob,
    AsyncMsgbusClient,
    ConfigurationError,
    InvalidArgumentError,
    Job,
    MsgbusClient,
)
from msgbus_server.testing import Daemon

TARGET = "tenant/default/worker"


async def test_async_work_runs_jobs_concurrently_acks_and_rejects(daemon: Daemon) -> None:
    queue = "sdk.work.async"
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        for n in range(20):
            await bus.enqueue_fifo(queue, "jobs", TARGET, b"fail" if n == 7 else b"job%d" % n)
        running = 0
        peak = 0
        done: list[bytes] = []

        async def handle(job: AsyncJob) -> None:
            nonlocal running, peak
            async with job:
                running += 1
                peak = max(peak, running)
                try:
                    await asyncio.sleep(0.05)
                    if job.payload == b"fail":
                        raise RuntimeError("this job fails")
                    done.append(job.payload)
                finally:
                    running -= 1

        handed = 0
        async with bus.work(queue, concurrency=4) as worker, asyncio.TaskGroup() as tasks:
            async for job in worker:
                handed += 1
                if job.payload == b"fail" and job.attempts >= 1:
                    # Redelivered after its failure (rejected, attempts + 1): settle it here.
                    assert await job.ack()
                else:
                    tasks.create_task(handle(job))
                if handed == 21:
                    break
        assert sorted(done) == sorted(b"job%d" % n for n in range(20) if n != 7)
        assert 1 < peak <= 4
        assert await bus.list_fifo(queue) == []


async def test_a_long_job_keeps_its_lease(daemon: Daemon) -> None:
    queue = "sdk.work.long"
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        await bus.enqueue_fifo(queue, "jobs", TARGET, b"slow")
        async with bus.work(queue, concurrency=1, visibility_ms=1_000) as worker:
            job = await anext(worker)
            # Three visibilities long: without the extensions its lease would run out.
            await asyncio.sleep(3)
            assert await bus.lease_fifo(queue) == []
            assert await job.ack()


async def test_lease_methods_and_dead_letters(daemon: Daemon) -> None:
    queue = "sdk.lease.methods"
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        await bus.enqueue_fifo(queue, "jobs", TARGET, b"a")
        [lease] = await bus.lease_fifo(queue, 10, visibility_ms=60_000)
        assert lease.message is not None
        assert lease.message.leased_until_ms == lease.expires_at_ms
        assert await bus.extend_fifo_lease(queue, lease.lease_id, 90_000) > lease.expires_at_ms
        rejected = await bus.reject_fifo_lease(queue, lease.lease_id)
        assert rejected.accepted
        assert not rejected.dead_lettered
        [listed] = await bus.list_fifo(queue)
        assert (listed.attempts, listed.leased_until_ms) == (1, 0)
        assert await bus.redrive_fifo(queue) == 0
        with pytest.raises(InvalidArgumentError) as refused:
            await bus.lease_fifo(queue, 1_001)
        assert refused.value.field == "max_messages"
        with pytest.raises(ConfigurationError):
            bus.work(queue, concurrency=0)


def test_blocking_work_with_threads(daemon: Daemon) -> None:
    queue = "sdk.work.sync"
    with MsgbusClient.connect(daemon.endpoint) as bus:
        for n in range(12):
            bus.enqueue_fifo(queue, "jobs", TARGET, b"job%d" % n)
        done: list[bytes] = []
        lock = threading.Lock()

        def handle(job: Job) -> None:
            with job, lock:
                done.append(job.payload)

        with bus.work(queue, concurrency=3) as worker, ThreadPoolExecutor(3) as pool:
            for handed, job in enumerate(worker, start=1):
                pool.submit(handle, job)
                if handed == 12:
                    break
        assert sorted(done) == sorted(b"job%d" % n for n in range(12))
        assert bus.list_fifo(queue) == []
