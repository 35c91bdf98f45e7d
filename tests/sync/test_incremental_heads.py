"""Sync asks a msgbus peer only for the logs changed since its last listing (issue 15).

A relay between the two daemons, written in the test, forwards every call to the real peer and
records the ListHeads requests, so the tests can see what the puller asks for: one full paged
listing first, then `changed_since` calls that list nothing while the peer is idle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.peers import FakePeer, log_state, start_node


class RecordingRelay(rpc.MsgbusServiceServicer):
    """Forwards Health, ListHeads and Fetch to a real daemon; remembers every ListHeads.

    `refuse_fetch` names topics whose first Fetch is refused, as a peer refuses one log.
    """

    def __init__(self, target: str, refuse_fetch: set[str] | None = None) -> None:
        self.target = target
        self.requests: list[pb.ListHeadsRequest] = []
        self.answered: list[int] = []
        self.refuse_fetch = set(refuse_fetch or ())
        self._stub: Any = None

    def stub(self) -> Any:
        if self._stub is None:
            self._stub = rpc.MsgbusServiceStub(grpc.aio.insecure_channel(self.target))
        return self._stub

    async def Health(self, request: pb.HealthRequest, context: Any) -> pb.HealthResponse:
        response: pb.HealthResponse = await self.stub().Health(request, timeout=10)
        return response

    async def ListHeads(self, request: pb.ListHeadsRequest, context: Any) -> pb.ListHeadsResponse:
        self.requests.append(request)
        try:
            response: pb.ListHeadsResponse = await self.stub().ListHeads(request, timeout=10)
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        self.answered.append(len(response.heads))
        return response

    async def Fetch(
        self, request: pb.FetchRequest, context: Any
    ) -> AsyncIterator[pb.FetchResponse]:
        if request.topic in self.refuse_fetch:
            self.refuse_fetch.discard(request.topic)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused once, by the test")
        async for response in self.stub().Fetch(request, timeout=30):
            yield response


def heads_of(daemon: Daemon, origin: Daemon) -> dict[str, int]:
    key = origin.node.key
    heads = daemon.stub().ListHeads(pb.ListHeadsRequest(), timeout=10).heads
    return {
        h.topic: h.head_id
        for h in heads
        if f"{h.origin.tenant_id}/{h.origin.bl_name}/{h.origin.device_id}" == key
    }


def publish(daemon: Daemon, topics: list[str]) -> None:
    stub = daemon.stub()
    for start in range(0, len(topics), 5_000):
        entries = [pb.PublishRequest(topic=t, payload=b"x") for t in topics[start : start + 5_000]]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


def test_idle_passes_ask_only_for_changes_and_changes_arrive(tmp_path: Path) -> None:
    source = start_node(tmp_path, "source")
    topics = [f"fleet.{n:04d}" for n in range(2_500)]
    publish(source, topics)
    relay = RecordingRelay(source.endpoint)  # type: ignore[abstract]
    with (
        FakePeer(relay) as peer,
        start_node(tmp_path, "puller", peers=[(peer.endpoint, None)]) as puller,
    ):
        wait_until(
            lambda: len(heads_of(puller, source)) == 2_500,
            message="the first full sync",
            timeout=60,
        )
        # The first listing pages (page_size set, no cursor yet), later ones ask for changes.
        assert relay.requests[0].page_size
        assert not relay.requests[0].changed_since
        wait_until(
            lambda: sum(1 for r in relay.requests if r.changed_since) >= 5,
            message="idle passes with changed_since",
        )
        seen = len(relay.requests)
        wait_until(lambda: len(relay.requests) >= seen + 3, message="three more idle passes")
        # Idle: each of those calls listed nothing.
        assert relay.answered[seen:]
        assert max(relay.answered[seen:]) == 0
        publish(source, ["fleet.0007", "fleet.2001", "brand.new"])
        wait_until(
            lambda: (
                heads_of(puller, source).get("fleet.0007") == 2
                and heads_of(puller, source).get("brand.new") == 1
            ),
            message="changed logs pulled",
        )
        assert heads_of(puller, source)["fleet.2001"] == 2
        source.stop()


def test_a_peer_that_restarted_is_listed_in_full_again(tmp_path: Path) -> None:
    source = start_node(tmp_path, "source")
    publish(source, [f"a.{n}" for n in range(20)])
    relay = RecordingRelay(source.endpoint)  # type: ignore[abstract]
    with (
        FakePeer(relay) as peer,
        start_node(tmp_path, "puller", peers=[(peer.endpoint, None)]) as puller,
    ):
        wait_until(lambda: len(heads_of(puller, source)) == 20, message="first sync")
        wait_until(
            lambda: any(r.changed_since for r in relay.requests), message="a changed_since pass"
        )
        source.restart()  # its change numbers start over: the cursor is no longer valid
        publish(source, ["a.3", "after.restart"])
        wait_until(
            lambda: (
                heads_of(puller, source).get("after.restart") == 1
                and heads_of(puller, source).get("a.3") == 2
            ),
            message="sync goes on after the peer restarted",
        )
        assert "restarted; listing every head again" in puller.stderr_text()
        source.stop()


def test_a_log_left_behind_is_retried_although_the_peer_lists_no_change(tmp_path: Path) -> None:
    source = start_node(tmp_path, "source")
    publish(source, ["steady", "refused.once"])
    relay = RecordingRelay(source.endpoint, refuse_fetch={"refused.once"})  # type: ignore[abstract]
    with (
        FakePeer(relay) as peer,
        start_node(tmp_path, "puller", peers=[(peer.endpoint, None)]) as puller,
    ):
        wait_until(lambda: "steady" in heads_of(puller, source), message="the good log")
        # The refused log comes on a later pass, though the peer's listing never shows a change.
        wait_until(
            lambda: heads_of(puller, source).get("refused.once") == 1, message="the retried log"
        )
        assert not relay.refuse_fetch
        state = log_state(puller.stub(), peer.endpoint, "refused.once", source.node)
        assert state is None or not state.last_error
        source.stop()
