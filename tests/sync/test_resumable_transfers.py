"""Resumable sync transfers (issue 15): a real msgbusd against peers whose Fetch stalls or breaks.

Each Fetch response has its own idle deadline (`--sync-response-idle-ms`, short here); a stream
that stalls or breaks keeps the prefix it delivered, the log's batch halves after a deadline and
doubles back after complete batches, and a slow log fails alone, never its peer.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import wait_until
from msgbus_testkit.logs import fetch_rows, heads, publish
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import FakePeer, TransferPeer, log_state, peer_state, start_node

IDLE_MS = 500
IDLE = ["--sync-response-idle-ms", str(IDLE_MS)]


def _halving(first: int, count: int) -> list[int]:
    """Batch sizes after consecutive deadlines: each half the one before, never below 1."""
    return [max(first >> i, 1) for i in range(count)]


def _error(stub: rpc.MsgbusServiceStub, peer: str, topic: str, origin: NodeId) -> str:
    state = log_state(stub, peer, topic, origin)
    return state.last_error if state is not None else ""


def _head(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId) -> int:
    return heads(stub).get((topic, origin.key), 0)


def _check_peer_not_failed(stub: rpc.MsgbusServiceStub, peer: str) -> None:
    state = wait_until(lambda: peer_state(stub, peer), message="the peer-level record")
    assert (state.consecutive_failures, state.last_error) == (0, "")


def test_a_stalled_stream_commits_its_prefix_halves_the_batch_and_grows_back(
    tmp_path: Path,
) -> None:
    m_id = node_id("slowpeer")
    peer = TransferPeer(m_id)  # type: ignore[abstract]
    peer.put("events", 30)
    peer.stall_at[("events", m_id.key)] = 11  # ten quick messages, then nothing
    with FakePeer(peer) as fake:
        a = start_node(tmp_path, "a", peers=[(fake.endpoint, m_id.key)], batch_limit=16, extra=IDLE)
        try:
            stub = a.stub()
            wait_until(lambda: _head(stub, "events", m_id) == 10, message="the ten received")
            error = wait_until(
                lambda: "head_id 10" in (e := _error(stub, fake.endpoint, "events", m_id)) and e,
                message="the log's failure after head 10",
            )
            assert error == (
                f"no response from peer {fake.endpoint} for {IDLE_MS / 1000:g}s on "
                f"topic=events origin={m_id.key} after head_id 10"
            )
            # Every Fetch from head 11 gets nothing and halves the batch, down to one message
            # and never below.
            wait_until(
                lambda: [limit for _, limit in peer.fetches_of("events")][-2:] == [1, 1],
                message="the batch to reach one message",
                timeout=60,
            )
            stalled = peer.fetches_of("events")
            assert stalled[0] == (1, 16)
            assert {start for start, _ in stalled[1:]} == {11}
            assert [limit for _, limit in stalled] == _halving(16, len(stalled))
            assert _head(stub, "events", m_id) == 10
            # A slow log is the log's failure, not the peer's.
            _check_peer_not_failed(stub, fake.endpoint)

            # The link recovers: the log completes, the batch doubling back up to the limit.
            del peer.stall_at[("events", m_id.key)]
            wait_until(lambda: _head(stub, "events", m_id) == 30, message="the whole log")
            resumed = peer.fetches_of("events")[len(stalled) :]
            # A Fetch that was already waiting when the link recovered may still time out.
            while resumed[1:2] == [(11, 1)]:
                resumed.pop(0)
            assert resumed == [(11, 1), (12, 2), (14, 4), (18, 8), (26, 16)]
            rows = fetch_rows(stub, "events", m_id)
            assert [r.head_id for r in rows] == list(range(1, 31))
            assert [r.id for r in rows] == [e.id for e in peer.logs[("events", m_id.key)]]
            wait_until(
                lambda: _error(stub, fake.endpoint, "events", m_id) == "",
                message="the log's failure to clear",
            )
        finally:
            a.kill()


def test_a_stream_broken_mid_transfer_keeps_its_prefix_and_resumes_without_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    m_id = node_id("flaky")
    peer = TransferPeer(m_id)  # type: ignore[abstract]
    peer.put("events", 30)
    peer.break_after[("events", m_id.key)] = 7  # every stream resets after 7 messages
    with FakePeer(peer) as fake:
        a = start_node(tmp_path, "a", peers=[(fake.endpoint, m_id.key)], batch_limit=20, extra=IDLE)
        try:
            stub = a.stub()
            wait_until(lambda: _head(stub, "events", m_id) == 30, message="the whole log")
            rows = fetch_rows(stub, "events", m_id)
            assert [r.id for r in rows] == [e.id for e in peer.logs[("events", m_id.key)]]
            assert [r.head_id for r in rows] == list(range(1, 31))
            # Each pass resumed right after the prefix the broken stream had delivered; a reset
            # is no deadline, so the batch kept its size.
            assert peer.fetches_of("events") == [(1, 20), (8, 20), (15, 20), (22, 20), (29, 20)]
            state = wait_until(
                lambda: (
                    (s := log_state(stub, fake.endpoint, "events", m_id))
                    and s.local_head == 30
                    and s
                ),
                message="the log's record to catch up",
            )
            assert (state.last_synced_head, state.last_error) == (30, "")
            _check_peer_not_failed(stub, fake.endpoint)
        finally:
            a.kill()


def test_a_slow_log_fails_alone_while_a_fast_log_of_the_same_peer_keeps_syncing(
    tmp_path: Path,
) -> None:
    m_id = node_id("mixed")
    peer = TransferPeer(m_id)  # type: ignore[abstract]
    # Listed first, so that every pass meets the slow log before the fast one.
    peer.put("a.slow", 5)
    peer.stall_at[("a.slow", m_id.key)] = 1  # never sends anything
    peer.put("b.fast", 3)
    with FakePeer(peer) as fake:
        a = start_node(tmp_path, "a", peers=[(fake.endpoint, m_id.key)], batch_limit=8, extra=IDLE)
        try:
            stub = a.stub()
            for count in (3, 6, 9, 12):
                peer.put("b.fast", count)
                wait_until(
                    lambda count=count: _head(stub, "b.fast", m_id) == count,  # type: ignore[misc]
                    message=f"the fast log at head {count}",
                )
            wait_until(
                lambda: [limit for _, limit in peer.fetches_of("a.slow")][-2:] == [1, 1],
                message="the slow log's batch to reach one message",
                timeout=60,
            )
            peer.put("b.fast", 15)
            wait_until(
                lambda: _head(stub, "b.fast", m_id) == 15,
                message="the fast log to go on while the slow one fails",
            )
            slow = [limit for _, limit in peer.fetches_of("a.slow")]
            assert slow == _halving(8, len(slow))
            assert _head(stub, "a.slow", m_id) == 0
            state = log_state(stub, fake.endpoint, "a.slow", m_id)
            assert state is not None
            assert state.consecutive_failures >= len(slow) - 1
            assert state.last_error.startswith(f"no response from peer {fake.endpoint} for 0.5s")
            assert state.last_error.endswith("after head_id 0")
            _check_peer_not_failed(stub, fake.endpoint)
        finally:
            a.kill()


MIB = 1024 * 1024


def _payload(index: int) -> bytes:
    """1 MiB, different for each of 251 consecutive messages."""
    return bytes([index % 251]) * MIB


def test_two_daemons_sync_200_messages_of_1_mib_with_a_short_idle_deadline(
    tmp_path: Path,
) -> None:
    """The whole transfer takes far longer than the idle deadline; no response does."""
    count = 200
    with start_node(tmp_path, "b") as b:
        b_stub = b.stub()
        with ThreadPoolExecutor(4) as pool:
            sent = list(pool.map(lambda i: publish(b_stub, "big", _payload(i)), range(count)))
        a = start_node(
            tmp_path,
            "a",
            peers=[(b.endpoint, b.node.key)],
            extra=["--sync-response-idle-ms", "1000"],
        )
        try:
            stub = a.stub()
            wait_until(
                lambda: _head(stub, "big", b.node) == count,
                message="200 messages of 1 MiB",
                timeout=240,
                interval=0.5,
            )
            copied = stub.GetHead(pb.GetHeadRequest(topic="big", origin=sent[0].origin), timeout=30)
            original = b_stub.GetHead(
                pb.GetHeadRequest(topic="big", origin=sent[0].origin), timeout=30
            )
            assert (copied.head_id, copied.first_head_id, copied.bytes) == (
                original.head_id,
                original.first_head_id,
                original.bytes,
            )
            by_head = {e.head_id: (e.id, _payload(i)) for i, e in enumerate(sent)}
            for head_id in (1, 2, 100, 199, 200):
                request = pb.FetchRequest(
                    topic="big", origin=sent[0].origin, from_head_id=head_id, limit=1
                )
                (response,) = list(stub.Fetch(request, timeout=30))
                assert (response.message.id, response.message.payload) == by_head[head_id]
        finally:
            a.kill()
