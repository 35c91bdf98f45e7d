"""Hostile input to the contract's extensions: Hypothesis-generated requests to the keyed
publishes, the cursor RPCs, the FIFO lease RPCs, pattern Subscribe, PublishStream and Push.

As for the original RPCs (`test_hostile_input.py`), every answer is OK or one of
`ALLOWED_REJECTIONS` (in a stream: that code in `error_code`), never INTERNAL or UNKNOWN, never a
crash, and a refused request changes nothing of what it could touch (heads, the cursors, the
queue and its `QUEUE.dead`). An accepted one changes only what its RPC says: a commit that one
cursor, a lease only the lease state of the messages it answers, an ack its one message, a
redrive `moved_count` dead letters; a Push stores only copies it was sent that obey the accept
rules, of the pusher's own logs. One daemon per backend for the whole module; example counts
are bounded so the module stays quick.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgbus_core import NodeId
from msgbus_core.limits import MAX_NAME_BYTES
from msgbus_proto import pb, rpc
from msgbus_server.fifo_leases import MAX_VISIBILITY_MS, MAX_WAIT_MS
from msgbus_server.testing import Daemon
from msgbus_testkit.backends import BACKENDS, require_backend
from msgbus_testkit.calls import ALLOWED_REJECTIONS, status_of
from msgbus_testkit.hostile import (
    MAX_PAYLOAD,
    SEEDED_TOPIC,
    broken_rule,
    control,
    header_maps,
    hostile_daemon,
    nasty,
    node_ids,
    payloads,
    refusal_changes_nothing,
    try_call,
    u32,
    u64,
    with_node,
)
from msgbus_testkit.logs import fetch_log, heads, key_of, to_pb
from msgbus_testkit.nodes import LOCAL, NODE

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED_CODES = frozenset(code.value[0] for code in ALLOWED_REJECTIONS)
"""The allowed refusals as the numbers a stream's `error_code` carries."""
DEAD_ON_FIRST = "redrive-"
"""Queues named so allow one failed attempt (`--fifo-max-attempts`): a reject dead-letters."""
SEEDED_READER = "seeded-reader"
"""A cursor of the seeded log, committed before the fuzzing starts."""
LEASE_DEADLINE_S = 3.0
"""The deadline of a LeaseFifo call that may wait: a valid wait above it runs into it."""
_fresh = itertools.count(1)


def fresh(prefix: str) -> str:
    """A name no earlier example used."""
    return f"{prefix}{next(_fresh)}"


# -- strategies -----------------------------------------------------------------------------------


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Two draws in three from `valid`, else from `hostile`: so that some requests of every
    test are accepted and the checks of what an accepted request changed run too."""
    return st.integers(0, 2).flatmap(lambda n: hostile if n == 0 else valid)


simple_text = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
idempotency_keys = mostly(
    simple_text,
    st.one_of(
        nasty,
        st.text(st.characters(codec="utf-8"), min_size=1, max_size=140),
        st.sampled_from(["k" * 128, "k" * 129, "é" * 64, "é" * 65, "key\x7f", "key\u2028", "a b"]),
        st.text(control, min_size=1, max_size=3).map(lambda c: "key" + c),
    ),
)
topics = mostly(st.sampled_from([SEEDED_TOPIC, "keyed", "other"]), nasty)
origins = mostly(st.sampled_from([None, LOCAL, pb.NodeId()]), node_ids)
small_payloads = mostly(st.binary(max_size=32), payloads)
header_sets = mostly(st.dictionaries(simple_text, simple_text, max_size=2), header_maps)
cursor_names = mostly(st.sampled_from(["reader", SEEDED_READER]), nasty)
cursor_topics = mostly(st.sampled_from([SEEDED_TOPIC, "", "nolog"]), nasty)
head_ids = mostly(st.integers(0, 4), u64)


def forged_token(parts: list[Any]) -> str:
    """A page token of the daemon's shape (URL-safe base64 of a JSON list) holding `parts`."""
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


token_parts = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["\ud800", "a\x00", "", "9" * 19, "9" * 20, str(2**63), "-1", "١٢", "1 "]),
    st.integers(-(2**70), 2**70),
    st.none(),
)
page_tokens = mostly(
    st.just(""),
    st.one_of(
        st.text(max_size=40),
        st.lists(token_parts, max_size=5).map(forged_token),
        st.binary(max_size=30).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    ),
)
queue_names = st.one_of(
    nasty,
    st.sampled_from(
        [
            "x" * (MAX_NAME_BYTES - len(".dead")),
            "x" * (MAX_NAME_BYTES - len(".dead") + 1),
            "x" * MAX_NAME_BYTES,
            "x" * (MAX_NAME_BYTES - len(".dead")) + ".dead",
            "nothing-here.dead",
            ".dead",
        ]
    ),
)
LIVE = "<live>"
LIVE_DEAD = "<live>.dead"
"""Stand-ins for the example's own queue (seeded with messages) and its dead-letter queue."""
queue_choices = mostly(st.sampled_from([LIVE, LIVE, LIVE_DEAD]), queue_names)
counts = mostly(st.integers(0, 4), st.sampled_from([1000, 1001, 2**32 - 1]) | u32)
visibilities = mostly(
    st.sampled_from([0, 30_000, 600_000, MAX_VISIBILITY_MS]),
    st.sampled_from([1, MAX_VISIBILITY_MS + 1, 2**32 - 1]) | u32,
)
waits = mostly(st.just(0), st.sampled_from([1, 100, MAX_WAIT_MS, MAX_WAIT_MS + 1, 2**32 - 1]) | u32)
globs = mostly(
    st.sampled_from(["*", ">", "**", "seeded", "stream.*", "push-*.>", "a.*.b", "*.**"]),
    st.one_of(
        st.text(st.sampled_from("ab.*>/-$é"), max_size=12),
        nasty,
        st.sampled_from(["a.>.b", ">>", "a..b", ".", "*.*/", "**.a", "a**", "$msgbus.*"]),
    ),
)
resume_entries = st.builds(
    lambda t, o, h: with_node(pb.TopicHead(topic=t, head_id=h), "origin", o),
    topics,
    mostly(st.just(LOCAL), node_ids),
    head_ids,
)


def resolve(choice: str, live: str) -> str:
    """The queue a drawn choice names."""
    return {LIVE: live, LIVE_DEAD: f"{live}.dead"}.get(choice, choice)


# -- the daemon and what is stored ---------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    backend = require_backend(request.param)
    data_dir = tmp_path_factory.mktemp(f"hostile-ext-{backend}")
    with hostile_daemon(data_dir, backend, "--fifo-max-attempts", f"{DEAD_ON_FIRST}*=1") as started:
        stub = started.stub()
        for i in range(3):
            stub.Publish(pb.PublishRequest(topic=SEEDED_TOPIC, payload=b"%d" % i))
        stub.CommitCursor(pb.CommitCursorRequest(name=SEEDED_READER, topic=SEEDED_TOPIC, head_id=2))
        yield started


@pytest.fixture(scope="module")
def stub(daemon: Daemon) -> rpc.MsgbusServiceStub:
    return daemon.stub()


def all_cursors(stub: rpc.MsgbusServiceStub) -> dict[tuple[str, str, str], pb.Cursor]:
    """Every stored cursor by (name, topic, origin key)."""
    found: dict[tuple[str, str, str], pb.Cursor] = {}
    token = ""
    while True:
        page = stub.ListCursors(
            pb.ListCursorsRequest(page_size=10_000, page_token=token), timeout=30
        )
        for cursor in page.cursors:
            found[(cursor.name, cursor.topic, key_of(cursor.origin))] = cursor
        token = page.next_page_token
        if not token:
            return found


def queue_rows(stub: rpc.MsgbusServiceStub, queue: str) -> Any:
    """Every message of a queue, leased or not, by id; or the code ListFifo refused it with."""

    def listing() -> dict[str, pb.FifoMessage]:
        rows: dict[str, pb.FifoMessage] = {}
        token = ""
        while True:
            page = stub.ListFifo(
                pb.ListFifoRequest(queue=queue, page_size=1000, page_token=token), timeout=30
            )
            rows.update((m.id, m) for m in page.messages)
            token = page.next_page_token
            if not token:
                return rows

    return try_call(listing)


def queues(stub: rpc.MsgbusServiceStub, *names: str) -> dict[str, Any]:
    """The rows of each named queue and of its dead-letter queue."""
    return {q: queue_rows(stub, q) for name in names for q in (name, f"{name}.dead")}


def fill_queue(stub: rpc.MsgbusServiceStub, queue: str, count: int) -> list[str]:
    """Enqueue `count` messages; their ids."""
    target = pb.NodeId(tenant_id="t", bl_name="b", device_id="worker")
    return [
        stub.EnqueueFifo(
            pb.EnqueueFifoRequest(queue=queue, topic="jobs", target=target, payload=b"%d" % i),
            timeout=30,
        ).message.id
        for i in range(count)
    ]


def heads_snapshot(stub: rpc.MsgbusServiceStub) -> list[tuple[tuple[str, str], int]]:
    return sorted(heads(stub).items())


# -- exactly-once publish -------------------------------------------------------------------------


@FUZZ
@given(topic=topics, key=idempotency_keys, payload=small_payloads, headers=header_sets)
def test_publish_with_an_idempotency_key(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic: str,
    key: str,
    payload: bytes,
    headers: dict[str, str],
) -> None:
    """A keyed publish is stored once; its repeat answers the same envelope and stores nothing."""
    request = pb.PublishRequest(topic=topic, payload=payload, headers=headers, idempotency_key=key)
    answers: list[Any] = []

    def publish(**kw: Any) -> None:
        answers.append(stub.Publish(request, **kw))

    before = heads(stub)
    code = refusal_changes_nothing(daemon, publish, lambda: heads_snapshot(stub))
    if code is not grpc.StatusCode.OK:
        # The same request is refused the same way: the refusal stored no key either.
        assert refusal_changes_nothing(daemon, publish, lambda: heads_snapshot(stub)) == code
        return
    first = answers[0]
    log = (first.message.topic, key_of(first.message.origin))
    assert log == (topic, NODE)
    after = heads(stub)
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grown == ({} if first.duplicate else {log: 1}), "a publish stored elsewhere"
    assert first.message.head_id <= after[log]
    if not key:
        return
    repeat = stub.Publish(request, timeout=30)
    assert repeat.duplicate, "a repeated idempotency_key stored a second message"
    assert repeat.message == first.message
    assert heads(stub) == after


@FUZZ
@given(
    entries=st.lists(
        st.tuples(
            topics,
            small_payloads,
            mostly(st.sampled_from([None, None, "", "dup"]), idempotency_keys),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_publish_batch_with_idempotency_keys(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, entries: list[tuple[str, bytes, str | None]]
) -> None:
    """A batch stores one message per entry whose key did not repeat, or nothing at all.

    A None key is a fresh one, never used before: after a refused batch its entry, published
    alone, must not be answered as a duplicate (the refusal stored no key).
    """
    salt = fresh("fresh-key-")
    requests = [
        pb.PublishRequest(topic=topic, payload=payload, idempotency_key=key or f"{salt}-{i}")
        if key is None
        else pb.PublishRequest(topic=topic, payload=payload, idempotency_key=key)
        for i, (topic, payload, key) in enumerate(entries)
    ]
    answers: list[pb.PublishBatchResponse] = []

    def publish(**kw: Any) -> None:
        answers.append(stub.PublishBatch(pb.PublishBatchRequest(entries=requests), **kw))

    before = heads(stub)
    code = refusal_changes_nothing(daemon, publish, lambda: heads_snapshot(stub))
    if code is not grpc.StatusCode.OK:
        for request, (_, _, key) in zip(requests, entries, strict=True):
            if key is None:
                alone = try_call(lambda r=request: stub.Publish(r, timeout=30))
                if isinstance(alone, pb.PublishResponse):
                    assert not alone.duplicate, "a refused batch stored an idempotency key"
        return
    response = answers[0]
    assert len(response.messages) == len(requests)
    keyed = any(request.idempotency_key for request in requests)
    assert len(response.duplicates) == (len(requests) if keyed else 0), "the duplicate flags"
    stored: dict[tuple[str, str], int] = {}
    flags = list(response.duplicates) or [False] * len(requests)
    for message, duplicate in zip(response.messages, flags, strict=True):
        if not duplicate:
            log = (message.topic, key_of(message.origin))
            stored[log] = stored.get(log, 0) + 1
    after = heads(stub)
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grown == stored, "the heads grew by other than the entries stored"


# -- durable cursors ------------------------------------------------------------------------------


@FUZZ
@given(
    method=st.sampled_from(["CommitCursor", "GetCursor", "ListCursors", "DeleteCursor"]),
    name=cursor_names,
    topic=cursor_topics,
    origin=origins,
    head_id=head_ids,
    page_size=counts,
    page_token=page_tokens,
)
def test_cursor_rpcs(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    method: str,
    name: str,
    topic: str,
    origin: pb.NodeId | None,
    head_id: int,
    page_size: int,
    page_token: str,
) -> None:
    """Reads change nothing; a commit sets one cursor at most at the head; a delete removes
    only cursors of its name (and topic), as many as it says."""
    answers: list[Any] = []
    # The key a request names: an absent or all-empty origin is the local node.
    wanted = (
        name,
        topic,
        NODE if origin is None or not key_of(origin).strip("/") else key_of(origin),
    )
    if method == "CommitCursor":
        request: Any = with_node(
            pb.CommitCursorRequest(name=name, topic=topic, head_id=head_id), "origin", origin
        )
    elif method == "GetCursor":
        request = with_node(pb.GetCursorRequest(name=name, topic=topic), "origin", origin)
    elif method == "ListCursors":
        request = pb.ListCursorsRequest(name=name, page_size=page_size, page_token=page_token)
    else:
        request = with_node(pb.DeleteCursorRequest(name=name, topic=topic), "origin", origin)

    def call(**kw: Any) -> None:
        answers.append(getattr(stub, method)(request, **kw))

    before = all_cursors(stub)
    code = refusal_changes_nothing(daemon, call, lambda: (all_cursors(stub), heads_snapshot(stub)))
    after = all_cursors(stub)
    if code is not grpc.StatusCode.OK or method in ("GetCursor", "ListCursors"):
        assert after == before, f"{method} changed the cursors"
    if code is not grpc.StatusCode.OK:
        return
    answer = answers[0]
    if method == "CommitCursor":
        cursor = answer.cursor
        key = (cursor.name, cursor.topic, key_of(cursor.origin))
        assert key == wanted
        assert cursor.head_id == head_id
        head = stub.GetHead(pb.GetHeadRequest(topic=topic, origin=cursor.origin), timeout=30)
        assert head_id <= head.head_id, "a cursor committed beyond the log's head"
        assert after.pop(key).head_id == head_id
        before.pop(key, None)
        assert after == before, "a commit changed another cursor"
    elif method == "GetCursor":
        assert answer.found == (wanted in before)
        if answer.found:
            assert answer.cursor == before[wanted]
    elif method == "ListCursors":
        assert all(c in before.values() for c in answer.cursors)
        if name:
            assert all(c.name == name for c in answer.cursors)
        if answer.next_page_token:
            # A token the daemon made is always taken back.
            follow = pb.ListCursorsRequest(name=name, page_token=answer.next_page_token)
            stub.ListCursors(follow, timeout=30)
    else:
        gone = {k: c for k, c in before.items() if k not in after}
        assert after.keys() <= before.keys()
        assert len(gone) == answer.deleted_count
        assert all(k == wanted if topic else k[0] == name for k in gone)
        if not topic:
            assert not any(k[0] == name for k in after), "a cursor of the name was left"


# -- FIFO leases ----------------------------------------------------------------------------------


@FUZZ
@given(choice=queue_choices, count=counts, hold=visibilities, wait_ms=waits)
def test_lease_fifo(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, choice: str, count: int, hold: int, wait_ms: int
) -> None:
    """A lease takes only messages of its queue, in order, at most max_messages, and changes
    nothing else; a refused one leaves ListFifo unchanged."""
    live = fresh("lease-")
    ids = fill_queue(stub, live, 3)
    queue = resolve(choice, live)
    request = pb.LeaseFifoRequest(
        queue=queue, max_messages=count, visibility_ms=hold, wait_ms=wait_ms
    )
    answers: list[pb.LeaseFifoResponse] = []
    # A valid wait longer than the deadline runs into it: an answer no one waits for.
    patient = 0 < wait_ms <= MAX_WAIT_MS and wait_ms >= LEASE_DEADLINE_S * 1000

    def lease(**kw: Any) -> None:
        try:
            answers.append(stub.LeaseFifo(request, timeout=LEASE_DEADLINE_S if patient else 30))
        except grpc.RpcError as error:
            if not (patient and status_of(error) is grpc.StatusCode.DEADLINE_EXCEEDED):
                raise

    before = queues(stub, live, queue)
    code = refusal_changes_nothing(daemon, lease, lambda: queues(stub, live, queue))
    if code is not grpc.StatusCode.OK or not answers:
        return
    leases = answers[0].leases
    assert len(leases) <= max(count, 1)
    leased = [lease.message.id for lease in leases]
    assert len(set(leased)) == len(leased), "one message leased twice"
    assert [m.sequence for m in (lease.message for lease in leases)] == sorted(
        lease.message.sequence for lease in leases
    )
    after = queues(stub, live, queue)
    if queue == live:
        assert leased == ids[: len(leased)], "not the front of the queue, in order"
        assert len(leases) == min(max(count, 1), 3)
    for name, rows in after.items():
        # Leasing removes and adds nothing; only the leased messages' lease state changes.
        if isinstance(rows, dict):
            assert rows.keys() == before[name].keys(), f"a lease changed what {name} holds"
            for message_id, row in rows.items():
                if message_id not in leased:
                    assert row == before[name][message_id], "an unleased message changed"


@FUZZ
@given(
    method=st.sampled_from(["AckFifoLease", "RejectFifoLease", "ExtendFifoLease"]),
    dead_on_first=st.booleans(),
    which=mostly(st.just("held"), st.sampled_from(["held+x", "other"]) | nasty),
    choice=queue_choices,
    hold=visibilities,
)
def test_settle_a_lease(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    method: str,
    dead_on_first: bool,
    which: str,
    choice: str,
    hold: int,
) -> None:
    """Ack, reject and extend change only the leased message, and only when they say so."""
    live = fresh(DEAD_ON_FIRST if dead_on_first else "settle-")
    fill_queue(stub, live, 2)
    held = stub.LeaseFifo(pb.LeaseFifoRequest(queue=live), timeout=30).leases[0]
    lease_id = {"held": held.lease_id, "held+x": held.lease_id + "x", "other": "0" * 32}.get(
        which, which
    )
    queue = resolve(choice, live)
    if method == "AckFifoLease":
        request: Any = pb.AckFifoLeaseRequest(queue=queue, lease_id=lease_id)
    elif method == "RejectFifoLease":
        request = pb.RejectFifoLeaseRequest(queue=queue, lease_id=lease_id)
    else:
        request = pb.ExtendFifoLeaseRequest(queue=queue, lease_id=lease_id, visibility_ms=hold)
    answers: list[Any] = []

    def call(**kw: Any) -> None:
        answers.append(getattr(stub, method)(request, **kw))

    before = queues(stub, live, queue)
    code = refusal_changes_nothing(daemon, call, lambda: queues(stub, live, queue))
    if code is not grpc.StatusCode.OK:
        return
    answer = answers[0]
    after = queues(stub, live, queue)
    if not answer.accepted:
        assert after == before, f"{method} not accepted, yet the queue changed"
        return
    assert (queue, lease_id) == (live, held.lease_id), "a lease settled by another name"
    message_id = held.message.id
    rows, was = after[live], before[live]
    dead, was_dead = after[f"{live}.dead"], before[f"{live}.dead"]
    others = {k: v for k, v in rows.items() if k != message_id}
    assert others == {k: v for k, v in was.items() if k != message_id}
    if method == "AckFifoLease":
        assert message_id not in rows
        assert dead == was_dead
    elif method == "RejectFifoLease":
        assert answer.dead_lettered == dead_on_first
        if dead_on_first:
            assert message_id not in rows
            assert set(dead) == set(was_dead) | {message_id}
        else:
            assert rows[message_id].attempts == was[message_id].attempts + 1
            assert rows[message_id].leased_until_ms == 0
            assert dead == was_dead
    else:
        assert answer.expires_at_ms > 0
        assert dead == was_dead
        # A short extension may have run out by the listing: it then shows no lease.
        shown = rows[message_id].leased_until_ms
        assert shown == answer.expires_at_ms or (shown == 0 and 0 < hold < 10_000)


@FUZZ
@given(choice=queue_choices, page_size=counts, page_token=page_tokens)
def test_list_fifo(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, choice: str, page_size: int, page_token: str
) -> None:
    """ListFifo only reads; a page token it hands out is always taken back."""
    live = fresh("list-")
    fill_queue(stub, live, 3)
    queue = resolve(choice, live)
    answers: list[pb.ListFifoResponse] = []

    def call(**kw: Any) -> None:
        request = pb.ListFifoRequest(queue=queue, page_size=page_size, page_token=page_token)
        answers.append(stub.ListFifo(request, **kw))

    before = queues(stub, live, queue)
    code = refusal_changes_nothing(daemon, call, lambda: queues(stub, live, queue))
    assert queues(stub, live, queue) == before
    if code is grpc.StatusCode.OK and answers[0].next_page_token:
        follow = pb.ListFifoRequest(queue=queue, page_token=answers[0].next_page_token)
        stub.ListFifo(follow, timeout=30)


@FUZZ
@given(choice=queue_choices, count=counts)
def test_redrive_fifo(daemon: Daemon, stub: rpc.MsgbusServiceStub, choice: str, count: int) -> None:
    """A redrive moves `moved_count` dead letters, in order, to the back of the queue with
    attempts reset; nothing else changes."""
    live = fresh(DEAD_ON_FIRST)
    fill_queue(stub, live, 3)
    for lease in stub.LeaseFifo(pb.LeaseFifoRequest(queue=live, max_messages=3)).leases:
        stub.RejectFifoLease(pb.RejectFifoLeaseRequest(queue=live, lease_id=lease.lease_id))
    fill_queue(stub, live, 1)
    queue = resolve(choice, live)
    answers: list[pb.RedriveFifoResponse] = []

    def call(**kw: Any) -> None:
        request = pb.RedriveFifoRequest(queue=queue, max_messages=count)
        answers.append(stub.RedriveFifo(request, **kw))

    before = queues(stub, live, queue)
    code = refusal_changes_nothing(daemon, call, lambda: queues(stub, live, queue))
    after = queues(stub, live, queue)
    if code is not grpc.StatusCode.OK:
        return
    moved = answers[0].moved_count
    for name in {queue, f"{queue}.dead"} - {live, f"{live}.dead"}:
        if isinstance(after[name], dict):
            assert len(after[name]) == len(before[name]) + (moved if name == queue else -moved)
    if queue != live:
        assert {live: after[live], live + ".dead": after[live + ".dead"]} == {
            live: before[live],
            live + ".dead": before[live + ".dead"],
        }, "a redrive of another queue changed this one"
        return
    assert moved == (3 if count == 0 else min(count, 3))
    dead_before = sorted(before[f"{live}.dead"].values(), key=lambda m: m.sequence)
    back = sorted(after[live].values(), key=lambda m: m.sequence)
    waiting = sorted(before[live].values(), key=lambda m: m.sequence)
    assert [m.id for m in back] == [m.id for m in waiting + dead_before[:moved]]
    assert all(m.attempts == 0 and not m.dead_reason for m in back[len(waiting) :])
    assert set(after[f"{live}.dead"]) == {m.id for m in dead_before[moved:]}


# -- pattern Subscribe ----------------------------------------------------------------------------


@settings(FUZZ, max_examples=20)
@given(
    topic_pattern=globs,
    origin_pattern=mostly(st.sampled_from(["", "tenant/*/*", ">"]), globs),
    resume=mostly(
        st.lists(
            st.builds(
                pb.TopicHead, topic=st.just(SEEDED_TOPIC), origin=st.just(LOCAL), head_id=head_ids
            ),
            max_size=2,
        ),
        st.lists(resume_entries, max_size=4)
        | st.just([pb.TopicHead(topic="a", origin=LOCAL, head_id=1)] * 100_001),
    ),
    topic=mostly(st.just(""), st.sampled_from([SEEDED_TOPIC]) | nasty),
    origin=mostly(st.sampled_from([None, pb.NodeId()]), node_ids),
    start=head_ids,
)
def test_pattern_subscribe(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    topic_pattern: str,
    origin_pattern: str,
    resume: list[pb.TopicHead],
    topic: str,
    origin: pb.NodeId | None,
    start: int,
) -> None:
    """Any glob, any resume entry: an allowed answer and nothing stored."""
    request = pb.SubscribeRequest(
        topic=topic,
        topic_pattern=topic_pattern,
        origin_pattern=origin_pattern,
        resume_after=resume,
        from_head_id=start,
    )
    with_node(request, "origin", origin)
    refusal_changes_nothing(
        daemon,
        lambda **kw: stub.Subscribe(request, **kw),
        lambda: heads_snapshot(stub),
        streaming="subscribe",
    )


# -- PublishStream --------------------------------------------------------------------------------

stream_publishes = st.builds(
    pb.PublishRequest,
    topic=mostly(st.sampled_from(["stream", "stream-b"]), nasty),
    payload=small_payloads,
    headers=header_sets,
    idempotency_key=mostly(st.sampled_from(["", "", "s-dup"]), idempotency_keys),
)
stream_requests = st.builds(
    lambda request_id, single, entries: pb.PublishStreamRequest(
        request_id=request_id, publish=single, entries=entries
    ),
    u64,
    st.none() | stream_publishes,
    st.lists(stream_publishes, max_size=4),
)


@settings(FUZZ, max_examples=20)
@given(requests=st.lists(stream_requests, min_size=1, max_size=6))
def test_publish_stream(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, requests: list[pb.PublishStreamRequest]
) -> None:
    """Each request is answered in order, OK or with an allowed error_code and nothing of it
    stored; the heads grow by exactly the messages answered as new; the stream goes on."""
    marker = pb.PublishStreamRequest(
        request_id=2**64 - 1, publish=pb.PublishRequest(topic="stream-marker")
    )
    before = heads(stub)
    answers = list(stub.PublishStream(iter([*requests, marker]), timeout=30))
    assert daemon.poll() is None, "the daemon died"
    assert [a.request_id for a in answers] == [r.request_id for r in [*requests, marker]]
    stored: dict[tuple[str, str], int] = {}
    for answer in answers:
        if answer.error_code:
            assert answer.error_code in ALLOWED_CODES, answer
            assert not answer.messages
            assert not answer.duplicates
            continue
        duplicates = list(answer.duplicates) or [False] * len(answer.messages)
        for message, duplicate in zip(answer.messages, duplicates, strict=True):
            if not duplicate:
                log = (message.topic, key_of(message.origin))
                stored[log] = stored.get(log, 0) + 1
    assert answers[-1].error_code == 0, "the stream did not go on to a valid publish"
    after = heads(stub)
    grown = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert grown == stored, "the heads grew by other than the messages answered as new"


# -- Push -----------------------------------------------------------------------------------------

PUSHER = NodeId("tenant", "default", "pusher")
PUSHED: list[pb.PushRequest] = []
"""Every request any Push example sent: what a stored row of a pushed log may be a copy of."""
pushers = st.one_of(
    st.just(to_pb(PUSHER)),
    st.just(to_pb(PUSHER)),
    st.just(LOCAL),
    st.just(pb.NodeId()),
    node_ids,
)


@st.composite
def push_batches(draw: st.DrawFn, salt: str) -> pb.PushBatch:
    """A batch of one log of the pusher, honest or with hostile fields, or about another log."""
    topic = draw(st.sampled_from([f"push-{salt}", f"push-{salt}-b"]) | nasty)
    origin = draw(st.sampled_from([to_pb(PUSHER), to_pb(PUSHER), LOCAL]) | node_ids)
    batch = pb.PushBatch(batch_id=draw(u64), topic=topic)
    with_node(batch, "origin", origin)
    start = draw(st.sampled_from([1, 1, 2]) | u64)
    for n in range(draw(st.integers(0, 3))):
        message = batch.messages.add(
            id=f"push-{salt}-{topic[:20]}-{n}",
            topic=topic,
            head_id=min(start + n, 2**64 - 1),
            payload=b"%d" % n,
            created_at_ms=1_700_000_000_000 + n,
        )
        if origin is not None:
            message.origin.CopyFrom(origin)
        spoil = draw(st.sampled_from(["", "", "", "id", "origin", "payload", "headers", "deleted"]))
        if spoil == "id":
            message.id = draw(nasty)
        elif spoil == "origin":
            with_node(message, "origin", draw(node_ids))
        elif spoil == "payload":
            message.payload = draw(payloads)
        elif spoil == "headers":
            message.headers.update(draw(header_maps))
        elif spoil == "deleted":
            message.deleted = True
    batch.first_head_id = draw(st.sampled_from([0, 0, 0, 1, 2]) | u64)
    return batch


@st.composite
def push_streams(draw: st.DrawFn) -> tuple[pb.NodeId | None, list[pb.PushRequest]]:
    """A hello (or none) and then offers and batches in any order."""
    salt = fresh("s")
    hello = draw(st.none() | pushers)
    sent: list[pb.PushRequest] = []
    if hello is not None:
        sent.append(pb.PushRequest(hello=with_node(pb.PushHello(), "node", hello)))
    for _ in range(draw(st.integers(0 if hello is not None else 1, 5))):
        kind = draw(st.sampled_from(["offer", "batch", "batch", "hello"]))
        if kind == "hello":
            sent.append(pb.PushRequest(hello=pb.PushHello(node=to_pb(PUSHER))))
        elif kind == "offer":
            offered = draw(
                st.lists(resume_entries, max_size=4)
                | st.just([pb.TopicHead(topic="a", origin=to_pb(PUSHER))] * 1001)
            )
            sent.append(pb.PushRequest(offer=pb.PushOffer(heads=offered)))
        else:
            sent.append(pb.PushRequest(batch=draw(push_batches(salt))))
    return hello, sent


def sent_copy(sent: list[pb.PushRequest], row: pb.MessageEnvelope) -> pb.MessageEnvelope | None:
    """The sent message a stored row is a copy of (erased when deleted), or None."""
    for request in sent:
        for message in request.batch.messages if request.HasField("batch") else []:
            same_log = (message.topic, key_of(message.origin)) == (row.topic, key_of(row.origin))
            if not same_log or (message.id, message.head_id) != (row.id, row.head_id):
                continue
            if message.created_at_ms == row.created_at_ms and (
                row.deleted or (message.payload, message.headers) == (row.payload, row.headers)
            ):
                return message
    return None


@settings(FUZZ, max_examples=30)
@given(stream=push_streams())
def test_push(
    daemon: Daemon,
    stub: rpc.MsgbusServiceStub,
    stream: tuple[pb.NodeId | None, list[pb.PushRequest]],
) -> None:
    """Whatever a pusher sends, the answers are allowed codes and what is stored is the
    pusher's own logs, copies it sent that obey the accept rules; the daemon keeps serving."""
    _, sent = stream
    PUSHED.extend(sent)
    before = heads(stub)
    answers: list[pb.PushResponse] = []
    ended = grpc.StatusCode.OK
    try:
        answers.extend(stub.Push(iter(sent), timeout=30))
    except grpc.RpcError as error:
        ended = status_of(error)
    assert ended is grpc.StatusCode.OK or ended in ALLOWED_REJECTIONS, f"Push ended {ended}"
    assert daemon.poll() is None, "the daemon died"
    for answer in answers:
        if answer.HasField("ack"):
            assert answer.ack.error_code in ALLOWED_CODES | {0}, answer
    if answers:
        assert answers[0].HasField("welcome"), "a stream answered before its hello"
        assert sent[0].HasField("hello"), "a stream welcomed without a hello"
    after = heads(stub)
    for (topic, key), head in after.items():
        if before.get((topic, key)) == head:
            continue
        # No --accept-relayed: a pusher's own logs only, never this daemon's.
        assert answers, f"{topic} of {key} stored by a stream that was never welcomed"
        assert key == key_of(answers[0].welcome.pusher) != NODE, f"took {topic} of {key}"
        rows = fetch_log(stub, topic, NodeId.from_key(key))
        # Contiguous from its first head (a batch's first_head_id may start it later).
        assert [r.head_id for r in rows] == list(range(rows[0].head_id, head + 1))
        assert len({r.id for r in rows}) == len(rows), f"a duplicate id in {topic} of {key}"
        for row in rows:
            # No batch carries a valid delete marker, so nothing may be stored deleted.
            assert not row.deleted, f"{topic} of {key} head {row.head_id}: deleted, no marker"
            copy = sent_copy(PUSHED, row)
            assert copy is not None, f"{topic} from {key} head {row.head_id}: never sent"
            broken = broken_rule(copy, MAX_PAYLOAD)
            assert broken is None, f"a message breaking a rule was stored ({broken}): {copy}"


def test_the_daemon_still_serves(daemon: Daemon, stub: rpc.MsgbusServiceStub) -> None:
    assert stub.Health(pb.HealthRequest(), timeout=30).status == "SERVING"
    stub.Publish(pb.PublishRequest(topic="after-the-fuzz", payload=b"ok"), timeout=30)
    commit = pb.CommitCursorRequest(name="after-the-fuzz", topic="after-the-fuzz", head_id=1)
    stub.CommitCursor(commit, timeout=30)
    cursor = pb.GetCursorRequest(name="after-the-fuzz", topic="after-the-fuzz")
    assert stub.GetCursor(cursor, timeout=30).cursor.head_id == 1
    assert daemon.poll() is None


def test_an_honest_push_is_stored(daemon: Daemon, stub: rpc.MsgbusServiceStub) -> None:
    """The control for the Push fuzzing: an honest batch of the pusher's log does get in."""
    topic = fresh("push-honest-")
    batch = pb.PushBatch(batch_id=7, topic=topic, origin=to_pb(PUSHER))
    for n in (1, 2):
        batch.messages.add(
            id=f"{topic}-{n}", topic=topic, origin=to_pb(PUSHER), head_id=n, payload=b"%d" % n
        )
    sent = [pb.PushRequest(hello=pb.PushHello(node=to_pb(PUSHER))), pb.PushRequest(batch=batch)]
    PUSHED.extend(sent)
    answers = list(stub.Push(iter(sent), timeout=30))
    assert answers[0].welcome.pusher == to_pb(PUSHER)
    assert (answers[1].ack.error_code, answers[1].ack.head_id) == (0, 2)
    rows = fetch_log(stub, topic, PUSHER)
    assert [sent_copy(PUSHED, row) for row in rows] == list(batch.messages)


FORGED_TOKENS = {
    "lone-surrogate": ["\ud800", "t", "o"],
    "nul": ["a\x00", "t", "o"],
}
"""Page tokens of the daemon's shape whose strings no key holds: each once failed only in the
store (INTERNAL on SQLite, UNAVAILABLE on DuckDB) instead of INVALID_ARGUMENT."""


@pytest.mark.parametrize("forged", sorted(FORGED_TOKENS))
@pytest.mark.parametrize("method", ["ListCursors", "ListFifo", "ListPeerSyncStates", "ListHeads"])
def test_a_forged_page_token_is_invalid_argument(
    daemon: Daemon, stub: rpc.MsgbusServiceStub, method: str, forged: str
) -> None:
    parts: list[Any] = FORGED_TOKENS[forged]
    if method == "ListFifo":
        request: Any = pb.ListFifoRequest(queue="q", page_token=forged_token(parts[:1]))
    elif method == "ListHeads":
        request = pb.ListHeadsRequest(page_token=forged_token([*parts[:2], 0, ""]))
    elif method == "ListCursors":
        request = pb.ListCursorsRequest(page_token=forged_token(parts))
    else:
        request = pb.ListPeerSyncStatesRequest(page_token=forged_token(parts))
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=30)
    assert status_of(info.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (info.value.details() or "")
    assert stub.Health(pb.HealthRequest(), timeout=30).status == "SERVING"
