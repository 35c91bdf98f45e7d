"""FIFO leases over real gRPC against real msgbusd processes (issue 19).

LeaseFifo, AckFifoLease, RejectFifoLease, ExtendFifoLease, ListFifo and RedriveFifo: an expired
lease redelivered with attempts + 1, dead-lettering by --fifo-max-attempts and redrive, the
original PeekFifo/AckFifo/RejectFifo beside leases on one queue, long polls, validation naming
the field and the limit, and leases kept across a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, run_msgbusd, wait_until

TARGET = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="worker")


def _enqueue(stub: rpc.MsgbusServiceStub, queue: str, *payloads: bytes) -> list[pb.FifoMessage]:
    return [
        stub.EnqueueFifo(
            pb.EnqueueFifoRequest(queue=queue, topic="jobs", target=TARGET, payload=payload)
        ).message
        for payload in payloads
    ]


def _lease(
    stub: rpc.MsgbusServiceStub, queue: str, count: int = 1, visibility_ms: int = 0
) -> list[pb.FifoLease]:
    request = pb.LeaseFifoRequest(queue=queue, max_messages=count, visibility_ms=visibility_ms)
    return list(stub.LeaseFifo(request).leases)


def _listed(stub: rpc.MsgbusServiceStub, queue: str) -> list[pb.FifoMessage]:
    return list(stub.ListFifo(pb.ListFifoRequest(queue=queue)).messages)


def _refused(call: Callable[[Any], Any], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


@pytest.mark.parametrize("storage", ["sqlite", "duckdb", "memory"])
def test_workers_lease_in_fifo_order_and_an_expired_lease_is_redelivered(
    tmp_path: Path, storage: str
) -> None:
    extra = ["--volatile"] if storage == "memory" else []
    with Daemon.start(tmp_path, storage=storage, extra_args=extra) as daemon:
        stub = daemon.stub()
        _enqueue(stub, "jobs", b"a", b"b", b"c")
        first = _lease(stub, "jobs", 2, visibility_ms=300)
        assert [lease.message.payload for lease in first] == [b"a", b"b"]
        assert all(lease.message.leased_until_ms == lease.expires_at_ms for lease in first)
        [second] = _lease(stub, "jobs", 5, visibility_ms=60_000)
        assert second.message.payload == b"c"
        ack = pb.AckFifoLeaseRequest(queue="jobs", lease_id=first[1].lease_id)
        assert stub.AckFifoLease(ack).accepted

        # The lease of "a" runs out: "a" comes back, one attempt more, under a new lease.
        again = wait_until(lambda: _lease(stub, "jobs", 5), timeout=10, message="a redelivered")
        assert [(lease.message.payload, lease.message.attempts) for lease in again] == [(b"a", 1)]
        assert again[0].lease_id != first[0].lease_id
        stale = pb.AckFifoLeaseRequest(queue="jobs", lease_id=first[0].lease_id)
        assert not stub.AckFifoLease(stale).accepted
        extended = stub.ExtendFifoLease(
            pb.ExtendFifoLeaseRequest(queue="jobs", lease_id=second.lease_id, visibility_ms=90_000)
        )
        assert extended.accepted
        assert extended.expires_at_ms > second.expires_at_ms
        listed = _listed(stub, "jobs")
        assert [m.payload for m in listed] == [b"a", b"c"]
        assert all(m.leased_until_ms > 0 for m in listed)


def test_max_attempts_dead_letters_and_redrive_brings_them_back(tmp_path: Path) -> None:
    args = ["--fifo-max-attempts", "jobs.*=2", "--fifo-max-attempts", "*=1000"]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        _enqueue(stub, "jobs.mail", b"poison", b"fine")
        for attempt in range(2):
            [lease] = _lease(stub, "jobs.mail")
            assert (lease.message.payload, lease.message.attempts) == (b"poison", attempt)
            rejected = stub.RejectFifoLease(
                pb.RejectFifoLeaseRequest(queue="jobs.mail", lease_id=lease.lease_id)
            )
            assert rejected.accepted
            assert rejected.dead_lettered == (attempt == 1)
        [dead] = _listed(stub, "jobs.mail.dead")
        assert (dead.payload, dead.attempts) == (b"poison", 2)
        assert dead.dead_reason == "max_attempts reached by reject"
        assert [m.payload for m in _listed(stub, "jobs.mail")] == [b"fine"]
        # The original RejectFifo counts too, and an expired lease does.
        front = stub.PeekFifo(pb.PeekFifoRequest(queue="jobs.mail")).message
        reject = pb.RejectFifoRequest(queue="jobs.mail", message_id=front.id)
        assert stub.RejectFifo(reject).accepted
        _lease(stub, "jobs.mail", visibility_ms=200)
        # An expired lease is released by the next operation on its queue (here a lease).
        wait_until(
            lambda: not _lease(stub, "jobs.mail") and len(_listed(stub, "jobs.mail.dead")) == 2,
            timeout=10,
            message="the expired lease dead-lettered",
        )
        dead_now = _listed(stub, "jobs.mail.dead")
        assert dead_now[1].dead_reason == "max_attempts reached by lease expiry"

        moved = stub.RedriveFifo(pb.RedriveFifoRequest(queue="jobs.mail"))
        assert moved.moved_count == 2
        assert _listed(stub, "jobs.mail.dead") == []
        back = _listed(stub, "jobs.mail")
        assert [(m.payload, m.attempts, m.dead_reason) for m in back] == [
            (b"poison", 0, ""),
            (b"fine", 0, ""),
        ]
        assert back[0].sequence > front.sequence


def test_the_original_rpcs_see_only_what_no_lease_holds(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        a, b = _enqueue(stub, "jobs", b"a", b"b")
        [lease] = _lease(stub, "jobs", visibility_ms=60_000)
        assert lease.message.id == a.id
        front = stub.PeekFifo(pb.PeekFifoRequest(queue="jobs")).message
        assert front.id == b.id
        assert not stub.AckFifo(pb.AckFifoRequest(queue="jobs", message_id=a.id)).accepted
        assert stub.AckFifo(pb.AckFifoRequest(queue="jobs", message_id=b.id)).accepted
        # Only the leased message is left: to an original client the queue is empty.
        error = _refused(stub.PeekFifo, pb.PeekFifoRequest(queue="jobs"))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        reject = pb.RejectFifoLeaseRequest(queue="jobs", lease_id=lease.lease_id)
        assert stub.RejectFifoLease(reject).accepted
        again = stub.PeekFifo(pb.PeekFifoRequest(queue="jobs")).message
        assert (again.id, again.attempts) == (a.id, 1)


def test_a_lease_waits_for_an_enqueue(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        assert _lease(stub, "jobs") == []
        got: list[pb.FifoLease] = []

        def wait() -> None:
            request = pb.LeaseFifoRequest(queue="jobs", wait_ms=30_000)
            got.extend(stub.LeaseFifo(request, timeout=60).leases)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)  # not a timing assertion: the lease would find it either way
        _enqueue(stub, "jobs", b"late")
        waiter.join(timeout=40)
        assert [lease.message.payload for lease in got] == [b"late"]


def test_bad_lease_requests_name_the_field_and_the_limit(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        _enqueue(stub, "jobs", b"x")
        cases: list[tuple[Callable[[Any], Any], object, str]] = [
            (stub.LeaseFifo, pb.LeaseFifoRequest(queue="jobs", max_messages=1_001), "1000"),
            (
                stub.LeaseFifo,
                pb.LeaseFifoRequest(queue="jobs", visibility_ms=43_200_001),
                "43200000",
            ),
            (stub.LeaseFifo, pb.LeaseFifoRequest(queue="jobs", wait_ms=60_001), "60000"),
            (stub.LeaseFifo, pb.LeaseFifoRequest(queue="q" * 251), "250"),
            (stub.LeaseFifo, pb.LeaseFifoRequest(queue=""), "queue"),
            (stub.AckFifoLease, pb.AckFifoLeaseRequest(queue="jobs", lease_id=""), "lease_id"),
            (
                stub.ExtendFifoLease,
                pb.ExtendFifoLeaseRequest(queue="jobs", lease_id="1.x", visibility_ms=43_200_001),
                "43200000",
            ),
            (stub.ListFifo, pb.ListFifoRequest(queue="jobs", page_token="nope"), "page_token"),
            (stub.RedriveFifo, pb.RedriveFifoRequest(queue="r" * 252), "250"),
        ]
        for call, request, named in cases:
            error = _refused(call, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert named in (error.details() or ""), (request, error.details())
        # Nothing was leased and the daemon keeps serving.
        [lease] = _lease(stub, "jobs")
        assert lease.message.payload == b"x"
        # An unknown lease is not an error: accepted false.
        unknown = pb.AckFifoLeaseRequest(queue="jobs", lease_id="999.unknown")
        assert not stub.AckFifoLease(unknown).accepted


def test_list_fifo_pages_and_leases_survive_a_restart(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        _enqueue(stub, "jobs", *(b"m%d" % n for n in range(250)))
        [lease] = _lease(stub, "jobs", visibility_ms=600_000)
        daemon.restart()
        stub = daemon.stub()
        seen: list[bytes] = []
        request = pb.ListFifoRequest(queue="jobs", page_size=100)
        while True:
            page = stub.ListFifo(request)
            assert len(page.messages) <= 100
            seen.extend(m.payload for m in page.messages)
            if not page.next_page_token:
                break
            request = pb.ListFifoRequest(
                queue="jobs", page_size=100, page_token=page.next_page_token
            )
        assert seen == [b"m%d" % n for n in range(250)]
        # The lease held across the restart: m0 is not handed out again, and its ack counts.
        [next_lease] = _lease(stub, "jobs")
        assert next_lease.message.payload == b"m1"
        ack = pb.AckFifoLeaseRequest(queue="jobs", lease_id=lease.lease_id)
        assert stub.AckFifoLease(ack).accepted


def test_bad_max_attempts_flags_are_one_line_errors(tmp_path: Path) -> None:
    for spec, expected in [
        ("jobs.*", "expected PATTERN=N"),
        ("jobs.*=0", "from 1 to 4294967295"),
        ("jobs.*=lots", "from 1 to 4294967295"),
    ]:
        result = run_msgbusd(
            ["--data", str(tmp_path / "x.sqlite"), "--fifo-max-attempts", spec], timeout=30
        )
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
        assert "--fifo-max-attempts" in lines[0]


def test_max_attempts_from_the_config_file_table(tmp_path: Path) -> None:
    config = tmp_path / "msgbus.toml"
    config.write_text('[fifo-max-attempts]\n"jobs" = 1\n')
    with Daemon.start(tmp_path, extra_args=["--config", str(config)]) as daemon:
        stub = daemon.stub()
        _enqueue(stub, "jobs", b"once")
        [lease] = _lease(stub, "jobs")
        reject = pb.RejectFifoLeaseRequest(queue="jobs", lease_id=lease.lease_id)
        assert stub.RejectFifoLease(reject).dead_lettered
        assert [m.payload for m in _listed(stub, "jobs.dead")] == [b"once"]
