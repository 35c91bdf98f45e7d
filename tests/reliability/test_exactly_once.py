"""Exactly-once publish through SIGKILL: every SDK call yields exactly one message (issue 19).

Several publishers (threads, each with its own blocking client: its own channel and its own
reconnects) publish continuously, by single publishes and by batches, every call with a unique
payload. Each round SIGKILLs the daemon once a random number of further publishes were
acknowledged, and restarts it on the same file; the clients retry their calls through the
restart with the same idempotency key. Afterwards every call has returned, every payload is
stored exactly once, at the head_id its call was answered with, and nothing is stored twice:
a publish committed just before the kill, whose answer was lost, was answered from its key.
"""

from __future__ import annotations

import functools
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from msgbus_sdk import MsgbusClient, is_duplicate
from msgbus_server.testing import Daemon, wait_until

ROUNDS = 5
PUBLISHERS = 4
BATCH = 10
"""Entries of each call of the batch publisher."""
TOPIC = "orders"


@dataclass
class Ledger:
    """What the publishers were answered; one lock, the publishers append."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[bytes, int] = field(default_factory=dict)
    """Payload -> the head_id its call was answered with."""
    duplicates: int = 0
    """Calls (entries) answered from a stored key: their first attempt had been committed."""
    failures: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def _acknowledged(ledger: Ledger, target: int) -> bool:
    """Whether `target` publishes were acknowledged (or a publisher gave up: fail at once)."""
    return ledger.count() >= target or bool(ledger.failures)


def _publisher(endpoint: str, worker: int, stop: threading.Event, ledger: Ledger) -> None:
    with MsgbusClient.connect(endpoint, timeout=5, publish_retry_deadline=90) as bus:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            try:
                if worker == 0:
                    payloads = [f"b{sequence}.{n}".encode() for n in range(BATCH)]
                    sent = bus.publish_batch([(TOPIC, payload) for payload in payloads])
                else:
                    payloads = [f"p{worker}.{sequence}".encode()]
                    sent = [bus.publish(TOPIC, payloads[0])]
            except Exception as error:  # every call must succeed within its retry deadline
                with ledger.lock:
                    ledger.failures.append(f"worker {worker} call {sequence}: {error!r}")
                return
            with ledger.lock:
                for payload, envelope in zip(payloads, sent, strict=True):
                    ledger.acknowledged[payload] = envelope.head_id
                    ledger.duplicates += is_duplicate(envelope)


def test_sigkill_rounds_leave_exactly_one_message_per_call(tmp_path: Path, backend: str) -> None:
    seed = int(os.environ.get("MSGBUS_CRASH_SEED", random.randrange(2**32)))
    chooser = random.Random(seed)
    print(f"seed {seed} (set MSGBUS_CRASH_SEED to replay the kill points)")
    ledger = Ledger()
    stop = threading.Event()
    with Daemon.start(tmp_path, storage=backend) as daemon:
        threads = [
            threading.Thread(target=_publisher, args=(daemon.endpoint, n, stop, ledger))
            for n in range(PUBLISHERS)
        ]
        for thread in threads:
            thread.start()
        try:
            for round_number in range(ROUNDS):
                # Kill at a random point of the load: after 50 to 400 more acknowledgements.
                target = ledger.count() + chooser.randrange(50, 400)
                wait_until(
                    functools.partial(_acknowledged, ledger, target),
                    message=f"round {round_number}: {target} publishes acknowledged",
                    timeout=120,
                )
                assert not ledger.failures, ledger.failures
                daemon.kill()
                daemon.restart()
            # One more stretch of load after the last restart, so every retry has landed.
            target = ledger.count() + 100
            wait_until(
                lambda: _acknowledged(ledger, target),
                message="publishes acknowledged after the last restart",
                timeout=120,
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert not ledger.failures, ledger.failures

        with MsgbusClient.connect(daemon.endpoint) as bus:
            stored = list(bus.iter_fetch(TOPIC, from_head_id=1))
        assert [m.head_id for m in stored] == list(range(1, len(stored) + 1))
        copies = Counter(m.payload for m in stored)
        twice = [payload for payload, count in copies.items() if count > 1]
        assert not twice, f"seed {seed}: stored more than once: {twice[:10]}"
        at = {m.payload: m.head_id for m in stored}
        missing = [p for p in ledger.acknowledged if p not in at]
        assert not missing, f"seed {seed}: acknowledged but not stored: {missing[:10]}"
        moved = [p for p, head in ledger.acknowledged.items() if at[p] != head]
        assert not moved, f"seed {seed}: stored at another head than answered: {moved[:10]}"
        # Every call returned, so every stored message is an acknowledged one.
        assert len(stored) == len(ledger.acknowledged)
        print(
            f"{backend}: {ROUNDS} SIGKILL rounds, {len(stored)} messages, each stored once; "
            f"{ledger.duplicates} answered from their key after a lost answer"
        )
        assert "Traceback" not in daemon.stderr_text()
