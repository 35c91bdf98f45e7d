"""The blocking client, on grpc's synchronous channel."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

import grpc

from msgbus_proto import pb, rpc

from . import _convert as convert
from . import _requests as requests
from ._config import (
    DEFAULT_ENDPOINT,
    DEFAULT_TIMEOUT,
    ReconnectPolicy,
    channel_options,
    parse_target,
    resolve_reconnect,
)
from ._convert import NodeLike, Payload
from ._errors import ConfigurationError, ProtocolError, translate_rpc_error
from ._generated.msgbus.v1 import (
    FifoMessage,
    GetHeadResponse,
    HealthResponse,
    MessageEnvelope,
    NodeId,
    PeerSyncState,
    ReadyResponse,
    TopicHead,
)
from ._requests import BatchEntry
from ._subscription import Subscription
from ._tls import TlsConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from msgbus.v1.msgbus_pb2_grpc import MsgbusServiceStub

__all__ = ["MsgbusClient"]

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class MsgbusClient:
    """A blocking client for one msgbus daemon, with the same methods as
    :class:`AsyncMsgbusClient`. It is safe to share between threads.

    Open it with :meth:`connect` and close it with :meth:`close` or ``with``::

        with MsgbusClient.connect("127.0.0.1:50051") as bus:
            message = bus.publish("demo.events", b"hello msgbus")

    Every method raises a subclass of :class:`MsgbusError` on failure, never a grpc error.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        target: str,
        default_origin: NodeId | None,
        timeout: float | None,
        reconnect_cap: float,
    ) -> None:
        """Wrap an open channel; prefer :meth:`connect`, which also checks the daemon answers."""
        self._channel = channel
        self._stub: MsgbusServiceStub = rpc.MsgbusServiceStub(channel)
        self._target = target
        self._default_origin = default_origin
        self._timeout = timeout
        self._closed = False
        self._node: NodeId | None = None

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_ENDPOINT,
        *,
        default_origin: NodeLike | None = None,
        tls: TlsConfig | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        reconnect_cap: float = ReconnectPolicy().max_delay,
    ) -> MsgbusClient:
        """Connect to a daemon and check that it answers (one Health call).

        Args:
            target: ``host:port``, ``http://host:port`` or ``https://host:port``.
                ``https`` means TLS with the system roots unless ``tls`` is given.
            default_origin: the origin used when a call does not name one: the ``origin`` of
                writes and reads and the ``source`` of FIFO messages. ``None`` lets the daemon
                use its own node, which is what applications on the daemon's device want.
            tls: TLS or mTLS settings; when given, TLS is used whatever the scheme.
            timeout: seconds allowed to connect and for each unary call (``None``: no limit).
                Streams (``subscribe``) are not limited.
            reconnect_cap: the longest the channel waits between its own reconnect attempts.

        Raises:
            UnavailableError: the daemon cannot be reached.
            ConfigurationError: the target or the TLS files are unusable.
        """
        parsed = parse_target(target)
        origin = (
            convert.parse_node_id(default_origin)
            if isinstance(default_origin, str)
            else (default_origin)
        )
        if tls is None and parsed.tls:
            tls = TlsConfig()
        options = channel_options(tls, reconnect_cap)
        if tls is not None:
            channel = grpc.secure_channel(
                parsed.address, tls.channel_credentials(), options=options
            )
        else:
            channel = grpc.insecure_channel(parsed.address, options=options)
        client = cls(
            channel,
            target=target,
            default_origin=origin,
            timeout=timeout,
            reconnect_cap=reconnect_cap,
        )
        try:
            # An eager check, like the original SDKs: a wrong port or a dead daemon fails here,
            # with grpc's explanation, rather than at the first real call.
            health = client.health()
        except BaseException:
            client.close()
            raise
        client._node = health.node
        return client

    @property
    def target(self) -> str:
        """The target the client was connected with."""
        return self._target

    @property
    def node(self) -> NodeId | None:
        """The daemon's own node identity, as reported by Health when connecting."""
        return self._node

    @property
    def default_origin(self) -> NodeId | None:
        """The origin used when a call does not name one (``None``: the daemon's node)."""
        return self._default_origin

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the channel; open subscriptions end."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _origin(self, origin: NodeLike | None) -> NodeLike | None:
        return self._default_origin if origin is None else origin

    def _unary(self, method: Callable[..., _Resp], request: object) -> _Resp:
        if self._closed:
            raise ConfigurationError("the client is closed")
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc) from None

    def health(self) -> HealthResponse:
        """The daemon's liveness (``status`` is ``"SERVING"``) and its node identity."""
        return convert.health(self._unary(self._stub.Health, pb.HealthRequest()))

    def ready(self) -> ReadyResponse:
        """Whether the daemon's store answers (``ready``), with the error when it does not."""
        return convert.ready(self._unary(self._stub.Ready, pb.ReadyRequest()))

    def publish(
        self, topic: str, payload: Payload, headers: Mapping[str, str] | None = None
    ) -> MessageEnvelope:
        """Append a message to the local log of ``topic``; returns it once durably stored.

        Raises:
            InvalidArgumentError: a malformed topic, or a payload or headers over the limits.
            PermissionDeniedError: a ``$msgbus.`` topic, or a default origin that is not the
                daemon's node.
        """
        request = requests.publish(topic, payload, headers, self._default_origin)
        response = self._unary(self._stub.Publish, request)
        return convert.require_envelope(response)

    def publish_batch(self, entries: Iterable[BatchEntry]) -> list[MessageEnvelope]:
        """Publish several messages, to one or several topics, in one atomic transaction.

        ``entries`` are :class:`PublishEntry` values or plain ``(topic, payload)`` and
        ``(topic, payload, headers)`` tuples, validated like :meth:`publish`. Returns one
        envelope per entry, in order; entries for the same topic get consecutive head_ids in
        that order. All or nothing: if any entry is invalid nothing is stored, and the error's
        message names the entry (``entries[3].topic ...``). An empty ``entries`` returns
        ``[]`` without calling the daemon. The daemon accepts up to 10,000 entries and, by
        default, 32 MiB per call.

        Raises:
            InvalidArgumentError: an entry is malformed or over the limits, or there are more
                than 10,000 entries.
            PermissionDeniedError: an entry's topic is reserved, or the default origin is not
                the daemon's node.
            UnimplementedError: the daemon predates PublishBatch (an original daemon).
        """
        request = requests.publish_batch(entries, self._default_origin)
        if not request.entries:
            return []
        response = self._unary(self._stub.PublishBatch, request)
        if len(response.messages) != len(request.entries):
            raise ProtocolError(
                f"server answered {len(response.messages)} envelopes "
                f"for a batch of {len(request.entries)}"
            )
        return [convert.envelope(message) for message in response.messages]

    def fetch(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        limit: int = 100,
    ) -> list[MessageEnvelope]:
        """One page of a log: at most ``limit`` messages (the daemon caps it at 10,000) from
        ``from_head_id`` in head order. Use :meth:`iter_fetch` for longer ranges.

        ``origin`` names the log's origin (``None``: the default origin, else the daemon's node).
        An unknown log gives an empty list.
        """
        request = requests.fetch(topic, self._origin(origin), from_head_id, limit)
        return list(self._fetch_page(request))

    def _fetch_page(self, request: pb.FetchRequest) -> Iterator[MessageEnvelope]:
        if self._closed:
            raise ConfigurationError("the client is closed")
        call = self._stub.Fetch(request, timeout=self._timeout)
        try:
            for response in call:
                yield from convert.fetch_envelopes(response)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def iter_fetch(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        to_head_id: int | None = None,
        *,
        page_size: int = 1000,
    ) -> Iterator[MessageEnvelope]:
        """Iterate over a log from ``from_head_id`` up to ``to_head_id`` (inclusive; ``None``:
        up to the head at the time the last page is read), one Fetch page at a time.

        Memory stays bounded by one page whatever the range. Stops early if you stop iterating.
        """
        size = requests.page_size(page_size)
        next_head = max(from_head_id, 1)
        origin = self._origin(origin)
        while to_head_id is None or next_head <= to_head_id:
            limit = size if to_head_id is None else min(size, to_head_id - next_head + 1)
            count = 0
            for env in self._fetch_page(requests.fetch(topic, origin, next_head, limit)):
                count += 1
                next_head = env.head_id + 1
                yield env
            # The daemon returns a full page whenever more messages exist (limit <= 10,000),
            # so a short page means the head was reached.
            if count < limit:
                return

    def subscribe(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        replay_limit: int = 100,
        reconnect: bool | ReconnectPolicy = True,
    ) -> Subscription:
        """Follow a log: replay it from ``from_head_id``, then deliver new messages live.

        Returns an iterator that never yields a head_id twice and never skips one.
        ``replay_limit`` is the daemon's replay page size, not a cap on delivery. With
        ``reconnect`` (``True``, or a :class:`ReconnectPolicy` for custom backoff and
        attempts), a broken stream is reopened at the last delivered head_id + 1, across
        daemon restarts; with ``False`` the first error ends the iteration.
        """
        origin = self._origin(origin)
        requests.subscribe(topic, origin, from_head_id, replay_limit)  # validate eagerly

        def make_request(next_head_id: int) -> pb.SubscribeRequest:
            return requests.subscribe(topic, origin, next_head_id, replay_limit)

        policy = resolve_reconnect(reconnect)
        return Subscription(
            self._stub,
            make_request,
            from_head_id,
            policy if reconnect is not False else None,
            lambda: self._closed,
        )

    def get_head(self, topic: str, origin: NodeLike | None = None) -> GetHeadResponse:
        """The head of a log: ``head_id`` and ``found`` (``{0, False}`` for an empty log)."""
        request = requests.get_head(topic, self._origin(origin))
        return convert.get_head(self._unary(self._stub.GetHead, request))

    def list_heads(self) -> list[TopicHead]:
        """The head of every log in the daemon's store, ordered by topic and origin."""
        response = self._unary(self._stub.ListHeads, pb.ListHeadsRequest())
        return [convert.topic_head(h) for h in response.heads]

    def list_peer_sync_states(self) -> list[PeerSyncState]:
        """The daemon's persisted sync state, per peer and per log synced from it."""
        response = self._unary(self._stub.ListPeerSyncStates, pb.ListPeerSyncStatesRequest())
        return [convert.peer_sync_state(s) for s in response.states]

    def delete_range(
        self,
        topic: str,
        from_head_id: int,
        to_head_id: int,
        origin: NodeLike | None = None,
    ) -> int:
        """Delete head_ids ``from_head_id..to_head_id`` (inclusive) of a local log.

        Deleted messages keep their head_id but lose payload and headers. Returns how many
        messages became deleted. Raises :class:`InvalidArgumentError` when from > to.
        """
        request = requests.delete_range(topic, self._origin(origin), from_head_id, to_head_id)
        response = self._unary(self._stub.DeleteRange, request)
        return response.deleted_count

    def enqueue_fifo(
        self,
        queue: str,
        topic: str,
        target: NodeLike,
        payload: Payload,
        headers: Mapping[str, str] | None = None,
    ) -> FifoMessage:
        """Append a message to the back of a local FIFO queue; returns it with its sequence.

        ``target`` is the node the message is meant for (a complete NodeId or its key).
        """
        request = requests.enqueue_fifo(
            queue, topic, target, payload, headers, self._default_origin
        )
        return convert.require_fifo(self._unary(self._stub.EnqueueFifo, request))

    def peek_fifo(self, queue: str) -> FifoMessage | None:
        """The front of a FIFO queue, or ``None`` when the queue is empty."""
        if self._closed:
            raise ConfigurationError("the client is closed")
        try:
            response = self._stub.PeekFifo(pb.PeekFifoRequest(queue=queue), timeout=self._timeout)
        except grpc.RpcError as exc:
            # The contract answers NOT_FOUND for an empty queue; that is not an error here.
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise translate_rpc_error(exc) from None
        return convert.require_fifo(response)

    def ack_fifo(self, queue: str, message_id: str) -> bool:
        """Remove the front message; ``False`` (nothing changes) if it is not ``message_id``."""
        request = pb.AckFifoRequest(queue=queue, message_id=message_id)
        return (self._unary(self._stub.AckFifo, request)).accepted

    def reject_fifo(self, queue: str, message_id: str) -> bool:
        """Count a failed attempt on the front message, which stays at the front; ``False``
        (nothing changes) if the front is not ``message_id``."""
        request = pb.RejectFifoRequest(queue=queue, message_id=message_id)
        return (self._unary(self._stub.RejectFifo, request)).accepted
