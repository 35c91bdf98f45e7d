"""Faults: a full disk, a bad or unwritable database, peers that hang, reset or talk garbage, and
restarts under load with subscribers attached.

The disk-full and read-only tests mount a small tmpfs (we run as root here and in CI); they skip,
saying why, only where mounting is not permitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_sdk import AsyncMsgbusClient, MsgbusError, ReconnectPolicy
from msgbus_server.testing import Daemon, free_port, msgbusd_command, run_msgbusd, wait_until
from msgbus_testkit.backends import backend_unavailable
from msgbus_testkit.calls import status_of
from msgbus_testkit.logs import check_log_shape, fetch_log

# -- a small filesystem ---------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` at `path` for the duration; skip if mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full (down to the last byte); returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1024 * 1024, 64 * 1024, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def test_disk_full_refuses_writes_clearly_and_recovers(tmp_path: Path, backend: str) -> None:
    with tmpfs(tmp_path / "small", "8m") as disk:
        data = disk / f"msgbus.{backend}"
        daemon = Daemon.start(tmp_path / "logs", storage=backend, extra_args=["--data", str(data)])
        try:
            stub = daemon.stub()
            acked = [
                stub.Publish(pb.PublishRequest(topic="t", payload=b"%d" % i), timeout=30).message
                for i in range(50)
            ]
            filler = fill(disk)
            codes: list[grpc.StatusCode] = []
            for i in range(200):
                payload = os.urandom(32 * 1024)
                try:
                    acked.append(
                        stub.Publish(
                            pb.PublishRequest(topic="t", payload=payload), timeout=30
                        ).message
                    )
                except grpc.RpcError as error:
                    codes.append(status_of(error))
                    details = error.details() or ""
                    print(f"publish {i} refused: {codes[-1]} {details}")
                    if len(codes) >= 3:
                        break
            assert codes, "a full disk never refused a publish"
            assert set(codes) <= {
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAVAILABLE,
            }, codes
            # Still up, and everything acknowledged is intact.
            assert daemon.poll() is None
            assert stub.Health(pb.HealthRequest(), timeout=30).status in ("SERVING", "NOT_SERVING")
            rows = fetch_log(stub, "t")
            check_log_shape(rows, "t on a full disk")
            assert [(r.id, r.payload) for r in rows[: len(acked)]] == [
                (m.id, m.payload) for m in acked
            ]
            # Free the space: publishing works again.
            filler.unlink()

            def publishes() -> bool:
                try:
                    stub.Publish(pb.PublishRequest(topic="t", payload=b"after"), timeout=30)
                except grpc.RpcError:
                    return False
                return True

            wait_until(publishes, message="a publish to succeed once space is free")
            rows = fetch_log(stub, "t")
            check_log_shape(rows, "t after recovery")
            assert rows[-1].payload == b"after"
            assert "Traceback" not in daemon.stderr_text()
            assert daemon.stop() == 0
            daemon.restart()
            assert fetch_log(daemon.stub(), "t") == rows
        finally:
            daemon.kill()


# -- databases the daemon must refuse --------------------------------------------------------------


def assert_refused(data: Path, backend: str, *words: str) -> str:
    """msgbusd refuses to start on `data`: one line, non-zero exit, never a traceback."""
    result = run_msgbusd(
        ["--listen", f"127.0.0.1:{free_port()}", "--storage", backend, "--data", str(data)]
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("msgbusd: error:"), lines
    for word in words:
        assert word in lines[0], lines
    return lines[0]


def make_database(directory: Path, backend: str) -> Path:
    """A real msgbus database with some data, cleanly closed."""
    with Daemon.start(directory, storage=backend) as daemon:
        entries = [
            pb.PublishRequest(topic="t", payload=b"p" * 500, headers={"i": str(i)})
            for i in range(200)
        ]
        daemon.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)
        assert daemon.stop() == 0
        return daemon.data_path


def test_corrupted_and_foreign_database_files_are_refused_in_one_line(
    tmp_path: Path, backend: str
) -> None:
    database = make_database(tmp_path / "db", backend)
    original = database.read_bytes()
    rng = random.Random(8)

    # The header overwritten with noise.
    database.write_bytes(rng.randbytes(4096) + original[4096:])
    print(assert_refused(database, backend, str(database)))
    # Truncated to a fraction of a page.
    database.write_bytes(original[:100])
    print(assert_refused(database, backend, str(database)))

    # Another application's database of the same kind.
    foreign = tmp_path / f"foreign.{backend}"
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(foreign)) as con:
            con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            con.execute("INSERT INTO users (name) VALUES ('alice')")
            con.commit()
    else:
        import duckdb

        with contextlib.closing(duckdb.connect(str(foreign))) as con:
            con.execute("CREATE TABLE users (id INTEGER, name TEXT)")
            con.execute("INSERT INTO users VALUES (1, 'alice')")
    print(assert_refused(foreign, backend, "not a msgbus database"))

    # The other backend's msgbus file.
    other = "duckdb" if backend == "sqlite" else "sqlite"
    if backend_unavailable(other) is None:
        other_file = make_database(tmp_path / "other", other)
        print(assert_refused(other_file, backend, str(other_file)))


def test_corruption_inside_the_data_pages_never_yields_a_traceback(
    tmp_path: Path, backend: str
) -> None:
    """Noise in the middle of the file: refused at startup, or served with clear errors."""
    database = make_database(tmp_path / "db", backend)
    data = bytearray(database.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = random.Random(9).randbytes(8192)
    database.write_bytes(bytes(data))
    port = free_port()
    process = subprocess.Popen(
        [
            *msgbusd_command(),
            "--listen",
            f"127.0.0.1:{port}",
            "--storage",
            backend,
            "--data",
            str(database),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = rpc.MsgbusServiceStub(channel)

        def settled() -> str | None:
            if process.poll() is not None:
                return "exited"
            try:
                stub.Health(pb.HealthRequest(), timeout=1)
            except grpc.RpcError:
                return None
            return "serving"

        state = wait_until(settled, message="the daemon to refuse or serve")
        if state == "serving":
            # It opened: every read answers, cleanly, OK or a clear storage error.
            for call in (
                lambda: list(stub.Fetch(pb.FetchRequest(topic="t", limit=10_000), timeout=30)),
                lambda: stub.ListHeads(pb.ListHeadsRequest(), timeout=30),
                lambda: stub.Ready(pb.ReadyRequest(), timeout=30),
                lambda: stub.Publish(pb.PublishRequest(topic="t", payload=b"x"), timeout=30),
            ):
                code = grpc.StatusCode.OK
                try:
                    call()
                except grpc.RpcError as error:
                    code = status_of(error)
                assert code in (
                    grpc.StatusCode.OK,
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ), code
            process.terminate()
        channel.close()
        _, stderr = process.communicate(timeout=30)
        assert "Traceback" not in stderr, stderr
        if state == "exited":
            assert process.returncode != 0
            assert stderr.strip().splitlines()[-1].startswith("msgbusd: error:"), stderr
        print(f"{backend}: {state}; {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("existing", [True, False], ids=["existing-file", "new-file"])
def test_read_only_data_directory_is_refused_in_one_line(
    tmp_path: Path, backend: str, existing: bool
) -> None:
    # Root ignores permission bits, so a read-only mount is the honest read-only directory.
    with tmpfs(tmp_path / "ro", "16m") as directory:
        data = directory / f"msgbus.{backend}"
        if existing:
            data.write_bytes(make_database(tmp_path / "db", backend).read_bytes())
        remount_read_only(directory)
        print(assert_refused(data, backend, str(data)))


# -- peers that hang, reset or talk garbage ----------------------------------------------------


class RawPeer:
    """A TCP server that accepts connections and then misbehaves below gRPC."""

    def __init__(self, behaviour: str, upstream: str | None = None, reset_after: int = 0) -> None:
        self.behaviour = behaviour
        self.upstream = upstream
        self.reset_after = reset_after
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.connections.append(conn)
            handler = {"silent": None, "garbage": self._garbage, "reset": self._proxy}
            target = handler[self.behaviour]
            if target is not None:
                threading.Thread(target=target, args=(conn,), daemon=True).start()

    def _garbage(self, conn: socket.socket) -> None:
        rng = random.Random(self.accepted)
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                conn.sendall(rng.randbytes(4096))
                conn.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    if not conn.recv(65536):
                        return

    def _proxy(self, conn: socket.socket) -> None:
        """Forward to the upstream daemon; reset the connection after `reset_after` bytes back."""
        assert self.upstream is not None
        host, port = self.upstream.rsplit(":", 1)
        with contextlib.suppress(OSError), socket.create_connection((host, int(port))) as up:

            def upward() -> None:
                with contextlib.suppress(OSError):
                    while data := conn.recv(65536):
                        up.sendall(data)

            threading.Thread(target=upward, daemon=True).start()
            sent = 0
            while sent < self.reset_after:
                data = up.recv(min(65536, self.reset_after - sent))
                if not data:
                    break
                conn.sendall(data)
                sent += len(data)
            # An abortive close: the client sees a reset, not an orderly end.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()

    def __enter__(self) -> RawPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


def _peer_error(stub: rpc.MsgbusServiceStub, endpoint: str) -> str:
    for state in stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=30).states:
        if state.peer == endpoint and not state.topic and state.consecutive_failures:
            return state.last_error
    return ""


def test_silent_resetting_and_garbage_peers_stall_nothing(tmp_path: Path) -> None:
    healthy_id = NodeId("tenant", "default", "healthy")
    flaky_id = NodeId("tenant", "default", "flaky")
    with (
        Daemon.start(tmp_path / "healthy", node=healthy_id.key) as healthy,
        Daemon.start(tmp_path / "flaky", node=flaky_id.key) as flaky,
    ):
        healthy_stub, flaky_stub = healthy.stub(), flaky.stub()
        for i in range(20):
            healthy_stub.Publish(pb.PublishRequest(topic="fine", payload=b"%d" % i))
        flaky_stub.PublishBatch(
            pb.PublishBatchRequest(
                entries=[pb.PublishRequest(topic="big", payload=b"b" * 2000) for _ in range(500)]
            )
        )
        with (
            RawPeer("silent") as silent,
            RawPeer("garbage") as garbage,
            RawPeer("reset", upstream=flaky.endpoint, reset_after=20_000) as resetting,
        ):
            args = ["--sync-interval-ms", "100"]
            for endpoint, node in (
                (silent.endpoint, "tenant/default/silent"),
                (garbage.endpoint, "tenant/default/garbage"),
                (resetting.endpoint, flaky_id.key),
                (healthy.endpoint, healthy_id.key),
            ):
                args += ["--peer", f"{endpoint}={node}"]
            with Daemon.start(tmp_path / "a", extra_args=args) as a:
                stub = a.stub()
                wait_until(
                    lambda: len(fetch_log(stub, "fine", healthy_id)) == 20, message="healthy data"
                )
                # Every bad peer was really tried, and failed on its own.
                wait_until(
                    lambda: silent.accepted and garbage.accepted, message="connections to bad peers"
                )
                wait_until(
                    lambda: "DEADLINE_EXCEEDED" in _peer_error(stub, silent.endpoint),
                    message="the silent peer's deadline to fire",
                )
                wait_until(
                    lambda: _peer_error(stub, garbage.endpoint),
                    message="the garbage peer's failure",
                )
                wait_until(
                    lambda: resetting.accepted >= 2, message="the resetting peer to be retried"
                )
                # The healthy peer still flows while the others keep failing.
                for i in range(20, 30):
                    healthy_stub.Publish(pb.PublishRequest(topic="fine", payload=b"%d" % i))
                wait_until(
                    lambda: len(fetch_log(stub, "fine", healthy_id)) == 30, message="more data"
                )
                check_log_shape(fetch_log(stub, "fine", healthy_id), "fine")
                # Whatever came through the resetting peer is an exact prefix of the real log.
                partial = fetch_log(stub, "big", flaky_id)
                check_log_shape(partial, "big through a resetting peer")
                assert partial == fetch_log(flaky_stub, "big", flaky_id)[: len(partial)]
                assert a.poll() is None
                assert "Traceback" not in a.stderr_text()
                assert a.stop(timeout=20) == 0


# -- restarts under load --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_subscribers_resume_without_gap_or_duplicate_across_restarts_under_load(
    tmp_path: Path, how: str
) -> None:
    topic = "under-load"
    daemon = await asyncio.to_thread(Daemon.start, tmp_path)
    stop_publishing = asyncio.Event()
    acked: dict[int, bytes] = {}
    received: list[list[int]] = [[] for _ in range(3)]
    policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.5)

    async def more_acks(count: int) -> None:
        target = len(acked) + count
        # The condition only reads what the publishers record, so it is polled from a worker
        # thread and the loop stays free to run them.
        await asyncio.to_thread(
            wait_until,
            lambda: len(acked) >= target,
            message=f"{count} more acknowledged publishes (publishers stalled)",
            interval=0.01,
        )

    try:
        async with (
            await AsyncMsgbusClient.connect(daemon.endpoint, timeout=10) as writer,
            await AsyncMsgbusClient.connect(daemon.endpoint, timeout=10) as reader,
        ):

            async def publisher(index: int) -> None:
                n = 0
                while not stop_publishing.is_set():
                    payload = f"{index}-{n}".encode()
                    try:
                        message = await writer.publish(topic, payload)
                    except MsgbusError:
                        await asyncio.sleep(0.02)  # the daemon is restarting: retry shortly
                        continue
                    acked[message.head_id] = payload
                    n += 1

            async def subscriber(index: int) -> None:
                subscription = reader.subscribe(topic, replay_limit=7, reconnect=policy)
                async for message in subscription:
                    received[index].append(message.head_id)
                    if message.payload == b"the end":
                        return

            publishers = [asyncio.create_task(publisher(i)) for i in range(4)]
            subscribers = [asyncio.create_task(subscriber(i)) for i in range(3)]
            for _ in range(2):
                await more_acks(200)
                if how == "kill":
                    await asyncio.to_thread(daemon.kill)
                else:
                    await asyncio.to_thread(daemon.stop)
                await asyncio.to_thread(daemon.restart)
            await more_acks(200)
            stop_publishing.set()
            await asyncio.gather(*publishers)
            end = await writer.publish(topic, b"the end")
            acked[end.head_id] = b"the end"
            await asyncio.wait_for(asyncio.gather(*subscribers), 60)
        last = max(acked)
        for heads in received:
            assert heads == list(range(1, len(heads) + 1)), "gap or duplicate"
            assert heads[-1] == last
        stored = await asyncio.to_thread(fetch_log, daemon.stub(), topic)
        check_log_shape(stored, topic)
        for head, payload in acked.items():
            assert stored[head - 1].payload == payload
        print(f"{how}: {len(acked)} acknowledged publishes, {sum(map(len, received))} deliveries")
    finally:
        await asyncio.to_thread(daemon.kill)
