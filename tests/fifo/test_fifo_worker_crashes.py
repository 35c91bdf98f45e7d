"""Eight worker processes with random SIGKILLs drain 10,000 jobs through FIFO leases (issue 19).

Every job is acked exactly once, or is dead (in `jobs.dead`) after max_attempts, and none is
lost: counted by job id against what the daemon holds at the end. Poison jobs fail every time
(rejected by `with job:`), and a killed worker's leases run out, so their jobs come back with
attempts + 1 to the other workers.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, clean_env, wait_until

JOBS = 10_000
WORKERS = 8
MAX_ATTEMPTS = 5
POISON_EVERY = 500
WORKER = Path(__file__).with_name("fifo_crash_worker.py")
TARGET = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="worker")


def _enqueue_all(stub: rpc.MsgbusServiceStub) -> dict[str, bytes]:
    def one(n: int) -> tuple[str, bytes]:
        payload = b"poison%d" % n if n % POISON_EVERY == 0 else b"job%d" % n
        request = pb.EnqueueFifoRequest(queue="jobs", topic="jobs", target=TARGET, payload=payload)
        return stub.EnqueueFifo(request).message.id, payload

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, range(JOBS)))


def _listed(stub: rpc.MsgbusServiceStub, queue: str) -> list[pb.FifoMessage]:
    messages: list[pb.FifoMessage] = []
    request = pb.ListFifoRequest(queue=queue, page_size=1_000)
    while True:
        page = stub.ListFifo(request)
        messages.extend(page.messages)
        if not page.next_page_token:
            return messages
        request = pb.ListFifoRequest(queue=queue, page_size=1_000, page_token=page.next_page_token)


def test_eight_crashing_workers_ack_every_job_once_or_dead_letter_it(tmp_path: Path) -> None:
    args = ["--fifo-max-attempts", f"jobs={MAX_ATTEMPTS}"]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        jobs = _enqueue_all(stub)
        assert len(jobs) == JOBS
        records = [tmp_path / f"worker{n}.log" for n in range(WORKERS)]

        def launch(n: int) -> subprocess.Popen[bytes]:
            command = [sys.executable, str(WORKER), daemon.endpoint, "jobs", str(records[n])]
            return subprocess.Popen(command, env=clean_env(), stderr=subprocess.DEVNULL)

        workers = [launch(n) for n in range(WORKERS)]
        rng = random.Random(19)
        kills = 0

        def drained() -> bool:
            nonlocal kills
            # A random worker is SIGKILLed and replaced, about every 0.3 s (paced, not awaited),
            # up to 40 times: its leased jobs must come back through lease expiry.
            if kills < 40:
                victim = rng.randrange(WORKERS)
                time.sleep(0.3)
                workers[victim].kill()
                workers[victim].wait()
                workers[victim] = launch(victim)
                kills += 1
            return not _listed(stub, "jobs")

        try:
            wait_until(drained, timeout=600, interval=0.5, message="the queue drained")
        finally:
            for worker in workers:
                worker.kill()
                worker.wait()

        lines = [
            line.split()
            for path in records
            if path.exists()
            for line in path.read_text().splitlines()
        ]
        acked = Counter(job_id for kind, job_id in lines if kind == "ack")
        tried = {job_id for kind, job_id in lines if kind == "try"}
        dead = {m.id: m for m in _listed(stub, "jobs.dead")}

        assert not [job_id for job_id, count in acked.items() if count > 1], "acked twice"
        assert not set(acked) & set(dead), "acked and dead"
        assert all(m.attempts == MAX_ATTEMPTS and m.dead_reason for m in dead.values())
        poison = {job_id for job_id, payload in jobs.items() if payload.startswith(b"poison")}
        assert poison <= set(dead), "every poison job ends dead"
        # What is neither recorded acked nor dead was acked by a worker killed before it could
        # write down the ack (its `try` is there): the queue no longer holds it, and only an
        # accepted ack removes a message.
        unrecorded = set(jobs) - set(acked) - set(dead)
        assert unrecorded <= tried, "lost jobs"
        assert len(unrecorded) <= kills * 4  # each worker holds up to 4 jobs
        assert kills >= 10, "too few crashes to mean anything"
