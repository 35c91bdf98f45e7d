"""One worker process of the crash test: drains a queue with the blocking SDK's `work`.

Usage: fifo_crash_worker.py ENDPOINT QUEUE RECORD_FILE. Before acking a job it appends
`try ID`, after an accepted ack `ack ID`, so a SIGKILL between the two leaves a `try` whose
outcome the test reads from the daemon. A payload starting with b"poison" always fails (the
`with job:` block raises, which rejects it).
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from msgbus_sdk import Job, MsgbusClient


def main() -> None:
    endpoint, queue, record = sys.argv[1:4]
    fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lock = threading.Lock()

    def note(line: str) -> None:
        with lock:
            os.write(fd, line.encode() + b"\n")

    def handle(job: Job) -> None:
        with job:
            if job.payload.startswith(b"poison"):
                raise RuntimeError("a poison job")
            note(f"try {job.message.id}")
            if job.ack():
                note(f"ack {job.message.id}")

    with (
        MsgbusClient.connect(endpoint) as bus,
        bus.work(queue, concurrency=4, visibility_ms=2_000) as worker,
        ThreadPoolExecutor(4) as pool,
    ):
        for job in worker:
            pool.submit(handle, job)


if __name__ == "__main__":
    main()
