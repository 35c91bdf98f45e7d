"""A real slow link between two daemons (issue 15): 2 Mbit/s, 150 ms each way, cut twice.

Daemon A runs in a network namespace of its own, reached only across a veth pair that tbf limits
to 2 Mbit/s in each direction. Daemon B runs here and pulls from A through `DelayCutProxy`, which
adds 150 ms to each direction and resets every connection twice during the transfer. A's log
`big` must arrive whole on B, byte for byte, while A's log `small`, published to every ~200 ms,
keeps syncing from the same peer.

The suite moves 200 messages of 32 KiB (6.25 MiB, about half a minute at 2 Mbit/s);
`MSGBUS_SLOW_LINK_FULL=1` moves the 200 messages of 1 MiB issue 15 names (200 MiB, about 14
minutes at the rate alone), with the same cuts and checks.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.service import PACK_BUDGET_BYTES
from msgbus_server.sync_fetch import envelopes
from msgbus_server.testing import wait_until
from msgbus_testkit.logs import check_log_shape, fetch_rows, heads, publish, to_pb
from msgbus_testkit.netns import (
    DelayCutProxy,
    NamespacedDaemon,
    TokenBucket,
    require_namespaces,
    veth_namespace,
)
from msgbus_testkit.peers import start_node

KIB = 1024
MIB = 1024 * KIB
FULL = os.environ.get("MSGBUS_SLOW_LINK_FULL") == "1"
COUNT = 200
SIZE = MIB if FULL else 32 * KIB
TOTAL = COUNT * SIZE

RATE_BITS_S = 2_000_000
LINK = TokenBucket(rate="2mbit", burst="32kbit", latency="400ms")
"""2 Mbit/s each way. The burst (4 KB) holds a full-size frame with room to spare and stays far
below a second's worth, so the rate holds at every time scale the test looks at. The latency
bounds the queue to about 100 KB: one bandwidth-delay product at the ~300 ms round trip the
proxy makes, so TCP keeps the link busy without a deep buffer hiding the rate."""
DELAY_S = 0.15
TRANSFER_S = TOTAL * 8 / RATE_BITS_S
"""The transfer's least possible time at the link's rate."""

IDLE_MS = round(3 * PACK_BUDGET_BYTES * 8 / RATE_BITS_S * 1000)
"""B's --sync-response-idle-ms: three times what the largest Fetch response (a packed
PACK_BUDGET_BYTES, 3 MiB) takes at the link's rate, ~38 s. A response that moves never hits
it, even right after a cut, while TCP starts over slowly; a link that goes silent still fails
the log within a minute."""

BATCH_LIMIT = 20
"""B's --sync-batch-limit (and so its packing): 20 messages of 32 KiB are a batch of 640 KiB,
so B's head of `big` moves in steps of a few seconds, and a cut placed at a head lands while the
next batch (fetched ahead while B commits) is on the wire. 1 MiB messages are batched by bytes
(8 MiB) below it, as with the default limit."""

SMALL_EVERY_S = 0.2
SEVERAL = 5
"""How often `small` must advance on B while `big` transfers, at the least: each cut that ends
`big`'s Fetch may let the pass go on to `small`, so two advances could come from the cuts
alone."""

WAIT_S = 3 * TRANSFER_S + 120


def _payload(index: int) -> bytes:
    """`SIZE` random bytes, the same for each index on every call (and incompressible)."""
    return random.Random(index).randbytes(SIZE)


def _digests(
    stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId
) -> Iterator[tuple[int, str, str]]:
    """(head_id, id, sha256 of the payload) of every message of a log, a few MiB at a time."""
    page = max(PACK_BUDGET_BYTES // SIZE, 1)
    next_head = 1
    while True:
        request = pb.FetchRequest(
            topic=topic,
            origin=to_pb(origin),
            from_head_id=next_head,
            limit=page,
            max_messages_per_response=page,
        )
        got = 0
        for response in stub.Fetch(request, timeout=60):
            for message in envelopes(response):
                got += 1
                next_head = message.head_id + 1
                yield message.head_id, message.id, hashlib.sha256(message.payload).hexdigest()
        if got < page:
            return


class _SmallPublisher:
    """Publishes a small message to `small` at A every SMALL_EVERY_S, in a thread, until stopped."""

    def __init__(self, stub: rpc.MsgbusServiceStub) -> None:
        self._stub = stub
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent: list[pb.MessageEnvelope] = []
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sent.append(publish(self._stub, "small", f"s-{len(self.sent)}".encode()))
                self._stop.wait(SMALL_EVERY_S)  # the pace of the publisher, not a wait for state
        except BaseException as error:
            self.error = error

    def __enter__(self) -> _SmallPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop publishing; `sent` is complete once this returns."""
        self._stop.set()
        self._thread.join(timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _echo_through(proxy: DelayCutProxy, data: bytes) -> bytes:
    """Send `data` through `proxy` to the echo server, half close, read until the end."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := client.recv(65536):
            received += chunk
        return bytes(received)


def test_the_proxy_forwards_in_order_and_resets_connections_on_demand_and_every_n_bytes() -> None:
    data = random.Random(7).randbytes(300 * KIB)
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        target = f"127.0.0.1:{echo.server_address[1]}"
        try:
            with DelayCutProxy(target, delay_s=0.05) as proxy:
                assert _echo_through(proxy, data) == data  # a half close is forwarded too
                assert (proxy.forwarded, proxy.cuts) == (len(data), 0)

                with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as client:
                    client.sendall(b"ping")
                    assert client.recv(4) == b"ping"
                    assert proxy.cut() == 1
                    with pytest.raises(ConnectionResetError):
                        client.recv(1)
                assert proxy.cut() == 0  # nothing left open

            with DelayCutProxy(target, delay_s=0.05, cut_every_bytes=100 * KIB) as proxy:
                with pytest.raises(ConnectionError):  # reset, or a broken pipe while sending
                    _echo_through(proxy, data)
                assert proxy.cuts == 1
                assert proxy.forwarded < len(data)
        finally:
            echo.shutdown()


@pytest.mark.timeout(WAIT_S + 300)
@pytest.mark.parametrize("batch_limit", [BATCH_LIMIT, None], ids=["limit-20", "adaptive"])
def test_200_messages_cross_a_2_mbit_link_cut_twice_while_another_log_of_the_peer_keeps_syncing(
    tmp_path: Path, batch_limit: int | None
) -> None:
    """`batch_limit` None is B's default: batches adapt to the link (`sync_fetch`)."""
    require_namespaces()
    with (
        veth_namespace() as link,
        NamespacedDaemon(link, tmp_path / "a", node="tenant/default/a") as a,
    ):
        a_stub = a.stub()
        # Published before the link is shaped: filling A is not what is measured.
        with ThreadPoolExecutor(4) as pool:
            sent = list(pool.map(lambda i: publish(a_stub, "big", _payload(i)), range(COUNT)))
        # Concurrent publishes take heads in any order: expect B's log in head order.
        expected = sorted(
            (e.head_id, e.id, hashlib.sha256(_payload(i)).hexdigest()) for i, e in enumerate(sent)
        )
        assert [head for head, _, _ in expected] == list(range(1, COUNT + 1))
        link.shape(LINK)

        with (
            DelayCutProxy(a.endpoint, delay_s=DELAY_S) as proxy,
            _SmallPublisher(a_stub) as small,
            start_node(
                tmp_path,
                "b",
                peers=[(proxy.endpoint, a.node.key)],
                batch_limit=batch_limit,
                extra=["--sync-response-idle-ms", str(IDLE_MS)],
            ) as b,
        ):
            started = time.monotonic()
            b_stub = b.stub()
            cut_at = [COUNT // 3, 2 * COUNT // 3]  # B's head of big
            cuts: list[tuple[int, int]] = []  # (B's head of big, connections reset)
            small_during: list[int] = []  # B's head of small at each look while big transfers

            def transferred() -> bool:
                on_b = heads(b_stub)
                big = on_b.get(("big", a.node.key), 0)
                if big < COUNT:
                    small_during.append(on_b.get(("small", a.node.key), 0))
                    if cut_at and big >= cut_at[0]:
                        cut_at.pop(0)
                        cuts.append((big, proxy.cut()))
                return big == COUNT

            wait_until(
                transferred,
                message=f"{COUNT} messages of {SIZE // KIB} KiB on B",
                timeout=WAIT_S,
                interval=0.25,
            )
            elapsed = time.monotonic() - started
            print(
                f"slow link: {COUNT} x {SIZE // KIB} KiB in {elapsed:.1f} s "
                f"(rate alone: {TRANSFER_S:.1f} s); cuts at B's big head {[c[0] for c in cuts]}"
            )
            small.stop()
            assert small.error is None, f"publishing to small at A failed: {small.error!r}"
            wait_until(
                lambda: heads(b_stub).get(("small", a.node.key), 0) == len(small.sent),
                message=f"all {len(small.sent)} messages of small on B",
                timeout=120,
            )

            # Both cuts came during the transfer and each reset a live connection, which B
            # then opened again.
            assert len(cuts) == 2
            assert all(big < COUNT and reset >= 1 for big, reset in cuts), cuts
            assert proxy.accepted >= 3

            assert list(_digests(b_stub, "big", a.node)) == expected

            rows = fetch_rows(b_stub, "small", a.node)
            check_log_shape(rows, "small on B")
            assert [r.id for r in rows] == [e.id for e in small.sent]

            # `small` kept syncing while `big` was still on its way: a pull stops at the end of
            # its slice and the next pass takes the peer's other changed logs first.
            advances = sum(1 for x, y in itertools.pairwise(small_during) if y > x)
            assert advances >= SEVERAL, (
                f"small advanced on B {advances} times (at least {SEVERAL} needed) while big "
                f"transferred ({len(small_during)} looks, small's heads on B "
                f"{sorted(set(small_during))})"
            )
