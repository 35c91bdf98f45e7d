"""A FIFO worker: enqueue a few jobs, then process them front to back.

The worker peeks at the front of the queue, runs the job, and acks it on success. A failing
job is rejected instead: its attempt count goes up and it stays at the front, so the worker
retries it (up to MAX_ATTEMPTS, after which it gives up on it and acks it to move on).

Uses the blocking client. Endpoint from MSGBUS_ENDPOINT (default 127.0.0.1:50051).
Run: `uv run python examples/fifo_worker.py`.
"""

from __future__ import annotations

import os
import uuid

from msgbus_sdk import FifoMessage, MsgbusClient

MAX_ATTEMPTS = 3


def run_job(job: FifoMessage) -> None:
    """The application's work. The job "flaky" fails on its first attempt."""
    if job.payload == b"flaky" and job.attempts == 0:
        raise RuntimeError("transient failure")


def main() -> None:
    endpoint = os.environ.get("MSGBUS_ENDPOINT", "127.0.0.1:50051")
    queue = f"jobs.{uuid.uuid4().hex[:8]}"
    with MsgbusClient.connect(endpoint) as bus:
        me = bus.node
        assert me is not None
        for payload in (b"resize image", b"flaky", b"send email"):
            queued = bus.enqueue_fifo(queue, "jobs.demo", me, payload, {"kind": "demo"})
            print(f"enqueued sequence={queued.sequence} payload={payload.decode()}")

        while (job := bus.peek_fifo(queue)) is not None:
            try:
                run_job(job)
            except RuntimeError as error:
                if job.attempts + 1 >= MAX_ATTEMPTS:
                    print(f"giving up on sequence={job.sequence}: {error}")
                    bus.ack_fifo(queue, job.id)
                else:
                    print(f"rejected sequence={job.sequence} attempt={job.attempts + 1}: {error}")
                    bus.reject_fifo(queue, job.id)
                continue
            bus.ack_fifo(queue, job.id)
            print(f"done sequence={job.sequence} payload={job.payload.decode()}")
        print("queue empty")


if __name__ == "__main__":
    main()
