"""The asyncio client, on grpc.aio.

The blocking :class:`MsgbusClient` is generated from this module by ``tools/unasync.py``: edit
this one and regenerate. Lines marked ``# async-only`` (and blocks between ``# async-only:
begin`` and ``# async-only: end``) are left out of the blocking client; so is publish
coalescing, which gathers publishes that become runnable in the same event-loop pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar, overload

import tenacity

from msgbus_proto import pb, rpc

from . import _async_transport as transport
from . import _convert as convert
from . import _cursors as cursors
from . import _fifo_leases as fifo_leases
from . import _requests as requests
from ._async_durable import AsyncDurableSubscription
from ._async_stream_publisher import StreamPublisher
from ._async_subscription import AsyncSubscription
from ._async_worker import AsyncWorker
from ._coalescing import PublishCoalescer  # async-only
from ._config import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_RECEIVE_BYTES,
    DEFAULT_TIMEOUT,
    ReconnectPolicy,
    channel_options,
    parse_endpoints,
    resolve_reconnect,
    token_metadata,
)
from ._convert import HeadsChanged, NodeLike, Payload
from ._cursors import CommitPolicy, DurableCommits
from ._errors import (
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    CursorExpiredError,
    MsgbusError,
    NotFoundError,
    ProtocolError,
    StatusCode,
    TransientError,
    UnavailableError,
    never_sent,
    stream_refusal,
    translate_rpc_error,
)
from ._generated.msgbus.v1 import Cursor as StoredCursor
from ._generated.msgbus.v1 import (
    FifoLease,
    FifoMessage,
    GetHeadResponse,
    HealthResponse,
    MessageEnvelope,
    NodeId,
    PeerSyncState,
    ReadyResponse,
    RejectFifoLeaseResponse,
    TopicHead,
)
from ._idempotency import (
    DEFAULT_PUBLISH_RETRY_DEADLINE,
    RETRY_ON,
    RETRY_WAIT,
    BatchAnswer,
    BatchRequest,
    keyed,
    new_key,
    published,
    published_batch,
)
from ._requests import BatchEntry
from ._subscription import Cursor, LogCursors, TrimPolicy, resolve_on_trim
from ._tls import TlsConfig

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from msgbus.v1.msgbus_pb2_grpc import MsgbusServiceAsyncStub

__all__ = ["AsyncMsgbusClient"]

_Resp = TypeVar("_Resp")

_log = logging.getLogger("msgbus_sdk")

_FETCH_DEFAULT_LIMIT = 100
"""The page size the daemon uses for a Fetch ``limit`` of 0."""

_REFUSED_WITH_DETAILS = frozenset(
    code.value[0]
    for code in (transport.GrpcStatus.INVALID_ARGUMENT, transport.GrpcStatus.PERMISSION_DENIED)
)
"""PublishStream refusals sent again as a unary call, which names the field in its status."""


def _fetch_after(request: pb.FetchRequest, last: MessageEnvelope, limit: int) -> pb.FetchRequest:
    """``request`` resumed after ``last``, for ``limit`` more envelopes of ``last``'s log."""
    resumed = pb.FetchRequest()
    resumed.CopyFrom(request)
    resumed.from_head_id = last.head_id + 1
    resumed.limit = limit
    origin = convert.to_pb_node(last.origin)
    if origin is not None:
        resumed.origin.CopyFrom(origin)
    return resumed


class AsyncMsgbusClient:
    """An asyncio client for one msgbus daemon.

    Open it with :meth:`connect` and close it with :meth:`close` or ``async with``::

        async with await AsyncMsgbusClient.connect("127.0.0.1:50051") as bus:
            message = await bus.publish("demo.events", b"hello msgbus")

    Every method raises a subclass of :class:`MsgbusError` on failure, never a grpc error;
    a closed client raises :class:`ClientClosedError`.

    Connected to several endpoints (the processes of one hub, say), the client uses one at a
    time and fails over to the next that answers when it becomes unavailable; see
    :meth:`connect`.

    Concurrent :meth:`publish` calls are coalesced into PublishBatch calls unless the client
    was connected with ``coalesce_publishes=False``; see :meth:`publish`.
    """

    def __init__(
        self,
        channel: transport.Channel,
        *,
        target: str | Sequence[str],
        default_origin: NodeId | None,
        timeout: float | None,
        open_channel: Callable[[str], transport.Channel] | None = None,
        coalesce_publishes: bool = True,  # async-only
        publish_stream: bool = True,
        auto_idempotency: bool = True,
        publish_retry_deadline: float = DEFAULT_PUBLISH_RETRY_DEADLINE,
    ) -> None:
        """Wrap an open channel; prefer :meth:`connect`, which also checks the daemon answers.

        ``channel`` goes to the first endpoint of ``target``. ``open_channel`` opens the
        channel to another endpoint's ``host:port``, when the client first needs it; it is
        required when ``target`` names several endpoints.

        Raises:
            ConfigurationError: ``target`` is malformed, or names several endpoints without
                ``open_channel``.
        """
        endpoints = parse_endpoints(target)
        if len(endpoints) > 1 and open_channel is None:
            raise ConfigurationError("a client of several endpoints needs open_channel")
        self._target = target if isinstance(target, str) else ",".join(target)
        self._endpoints = tuple(endpoint.text for endpoint in endpoints)
        self._addresses = tuple(endpoint.target.address for endpoint in endpoints)
        self._open_channel = open_channel
        # One channel per endpoint, opened when first used and kept until close(): calls and
        # streams still running on an endpoint the client moved away from are left alone.
        self._channels: list[transport.Channel | None] = [channel] + [None] * (len(endpoints) - 1)
        first: MsgbusServiceAsyncStub = rpc.MsgbusServiceStub(channel)
        self._stubs: list[MsgbusServiceAsyncStub | None] = [first] + [None] * (len(endpoints) - 1)
        # Publishes travel on one PublishStream per endpoint, unless streams are off or the
        # endpoint's daemon answered that it has none (then its publishes go as unary calls).
        self._publish_stream = publish_stream
        self._publishers: list[StreamPublisher | None] = [None] * len(endpoints)
        self._unary_endpoints: set[int] = set()
        self._current = 0
        self._failover_lock = transport.lock()
        self._default_origin = default_origin
        self._timeout = timeout
        self._closed = False
        self._node: NodeId | None = None
        self._auto_idempotency = auto_idempotency
        if publish_retry_deadline < 0:
            raise ConfigurationError("publish_retry_deadline must not be negative")
        self._publish_retry_deadline = publish_retry_deadline
        # async-only: begin
        self._coalescer = (
            PublishCoalescer(self._send_publish, self._send_publish_batch)
            if coalesce_publishes
            else None
        )
        # async-only: end

    @classmethod
    async def connect(
        cls,
        target: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        default_origin: NodeLike | None = None,
        tls: TlsConfig | None = None,
        # A default deadline for every call the client makes, not a limit on connect() alone.
        timeout: float | None = DEFAULT_TIMEOUT,  # noqa: ASYNC109
        reconnect_cap: float = ReconnectPolicy().max_delay,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        coalesce_publishes: bool = True,  # async-only
        token: str | None = None,
        publish_stream: bool = True,
        auto_idempotency: bool = True,
        publish_retry_deadline: float = DEFAULT_PUBLISH_RETRY_DEADLINE,
    ) -> AsyncMsgbusClient:
        """Connect to a daemon and check that it answers (one Health call).

        With several endpoints, they are tried in order and the client uses the first that
        answers SERVING (else the first that answers at all). When a call later finds the
        endpoint in use unavailable (UNAVAILABLE: connection refused or reset, the daemon
        shutting down), the client moves to the next endpoint that answers a Health check,
        round robin, for the calls after it. Reads (``health``, ``fetch``, ``get_head``,
        ``list_heads``, ``peek_fifo``, ...) are retried there, once per endpoint. Writes
        (``publish``, ``publish_batch``, ``enqueue_fifo``, ``ack_fifo``, ``reject_fifo``,
        ``delete_range``) are retried only when gRPC says the request never left the client
        (no connection could be made); otherwise the daemon may have stored the write, so it
        raises :class:`UnavailableError` and the next call goes to the new endpoint. The
        exception are publishes with an idempotency key (every publish has one unless
        ``auto_idempotency=False``): they are retried, see ``publish_retry_deadline``.
        Subscriptions resume on the new endpoint after the last head they delivered. Each
        failover is logged as a warning on the ``msgbus_sdk`` logger.

        Args:
            target: one endpoint, ``host:port``, ``http://host:port`` or ``https://host:port``;
                or several, as a sequence of them or in one comma-separated string
                (``"10.0.0.1:50051,10.0.0.2:50051"``). ``https`` on any endpoint means TLS
                with the system roots, for every endpoint, unless ``tls`` is given.
            default_origin: the origin used when a call does not name one: the ``origin`` of
                writes and reads and the ``source`` of FIFO messages. ``None`` lets the daemon
                use its own node, which is what applications on the daemon's device want.
            tls: TLS or mTLS settings, for every endpoint; when given, TLS is used whatever
                the scheme.
            timeout: seconds allowed to connect and for each unary call (``None``: no limit),
                and for each endpoint's Health check when connecting or failing over.
                Streams (``subscribe``) are not limited.
            reconnect_cap: the longest the channel waits between its own reconnect attempts.
            max_receive_bytes: the largest response the client accepts (default 64 MiB, which
                holds any message msgbusd accepts); lower it to bound what one response may
                cost the application.
            coalesce_publishes: gather concurrent :meth:`publish` calls into PublishBatch
                calls (the default); ``False`` sends one Publish per call.
            token: a bearer token, ``NAME.SECRET`` as ``python -m msgbus_server.tokens add``
                prints it, for a daemon whose policy names a token file. Every call the client
                makes carries it, on every endpoint, subscriptions' reopened streams included.
                A daemon without a policy ignores it; one that does not accept it answers
                UNAUTHENTICATED (:class:`UnauthenticatedError`, not retried, no failover) to
                every call but ``health`` and ``ready``. The client never logs it.
            publish_stream: send publishes (and publish batches) on one long-lived
                PublishStream per endpoint, the fastest path (the default); ``False`` sends
                each as a unary Publish or PublishBatch call. Against a daemon without
                PublishStream the client falls back to unary calls by itself, and remembers
                that per endpoint. Either way a publish returns only once it is durable.
            auto_idempotency: give every :meth:`publish` and :meth:`publish_batch` entry a
                random idempotency key unless the call names one (the default). The daemon
                stores the key with the message, so a retry of a publish that was stored but
                whose answer was lost returns the stored message (:func:`is_duplicate`) instead
                of storing it again. ``False`` sends keys only where a call names one; a
                publish without a key is never resent once it may have reached the daemon.
            publish_retry_deadline: seconds, from the first attempt, during which a publish
                whose entries all carry a key is sent again after UNAVAILABLE or
                DEADLINE_EXCEEDED, with exponential backoff and jitter, across reconnects,
                daemon restarts and failovers to processes of the same node (which share its
                store), with the same key every time (default 30; ``0`` sends it once). The
                last error is raised when it runs out, or after a failover to another node.

        Raises:
            UnavailableError: the daemon cannot be reached; with several endpoints, none of
                them answers (the message says why for each).
            ConfigurationError: the target or the TLS files are unusable; the message names
                a malformed endpoint. An empty list of endpoints is one too, and so is a
                ``token`` that is not ``NAME.SECRET`` (the message does not repeat it).
        """
        endpoints = parse_endpoints(target)
        metadata = token_metadata(token)
        origin = (
            convert.parse_node_id(default_origin)
            if isinstance(default_origin, str)
            else (default_origin)
        )
        if tls is None and any(endpoint.target.tls for endpoint in endpoints):
            tls = TlsConfig()
        credentials = tls.channel_credentials() if tls is not None else None
        options = channel_options(tls, reconnect_cap, max_receive_bytes)

        def open_channel(address: str) -> transport.Channel:
            return transport.open_channel(address, credentials, options, metadata)

        client = cls(
            open_channel(endpoints[0].target.address),
            target=target,
            default_origin=origin,
            timeout=timeout,
            open_channel=open_channel,
            coalesce_publishes=coalesce_publishes,  # async-only
            publish_stream=publish_stream,
            auto_idempotency=auto_idempotency,
            publish_retry_deadline=publish_retry_deadline,
        )
        try:
            # An eager check, like the original SDKs: a wrong port or a dead daemon fails here,
            # with grpc's explanation, rather than at the first real call.
            await client._use_first_answering()
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def target(self) -> str:
        """The target the client was connected with: every endpoint, as given.

        A sequence of endpoints is joined with commas, the form ``connect`` also accepts.
        """
        return self._target

    @property
    def endpoint(self) -> str:
        """The endpoint in use, one of :attr:`endpoints`; it changes when the client fails over."""
        return self._endpoints[self._current]

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint of :attr:`target`, in order, each as given (without spaces)."""
        return self._endpoints

    @property
    def node(self) -> NodeId | None:
        """The node identity of the endpoint in use, as its Health reported when connecting.

        After a failover, the node the new endpoint reported; the processes of one hub share
        one node identity.
        """
        return self._node

    @property
    def default_origin(self) -> NodeId | None:
        """The origin used when a call does not name one (``None``: the daemon's node)."""
        return self._default_origin

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # async-only: begin
    @property
    def coalesces_publishes(self) -> bool:
        """Whether :meth:`publish` calls are currently gathered into PublishBatch calls.

        ``False`` when connected with ``coalesce_publishes=False``, and also once the daemon
        answered that it does not implement PublishBatch (an original daemon).
        """
        return self._coalescer is not None and self._coalescer.batching

    # async-only: end
    async def close(self) -> None:
        """Close the channel: open subscriptions end, calls still running fail.

        Calls made after closing, and calls that were running or queued, raise
        :class:`ClientClosedError`. Closing twice is harmless.
        """
        if not self._closed:
            self._closed = True
            if self._coalescer is not None:  # async-only
                self._coalescer.close()  # async-only
            for publisher in self._publishers:
                if publisher is not None:
                    publisher.close()
            for channel in list(self._channels):
                if channel is not None:
                    await transport.close_channel(channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _origin(self, origin: NodeLike | None) -> NodeLike | None:
        return self._default_origin if origin is None else origin

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError

    def _translate(self, error: transport.RpcError) -> MsgbusError:
        # A call cut short by close() (CANCELLED, or UNAVAILABLE while the channel shuts down)
        # failed because of the close, not because of the daemon.
        return ClientClosedError() if self._closed else translate_rpc_error(error)

    def _closed_under(self, error: BaseException) -> bool:
        # grpc.aio cancels the calls of a closed channel with asyncio.CancelledError, which
        # must not read as a cancellation of the caller's task.
        return self._closed and transport.cancelled_by_channel(error)

    # -- endpoints and failover ---------------------------------------------------------------

    def _route(self) -> tuple[int, MsgbusServiceAsyncStub]:
        """The endpoint in use, and its stub."""
        index = self._current
        stub = self._stubs[index]
        assert stub is not None, "the endpoint in use has a channel"
        return index, stub

    async def _stub_at(self, index: int) -> MsgbusServiceAsyncStub:
        """The stub of an endpoint, opening its channel on first use."""
        stub = self._stubs[index]
        if stub is not None:
            return stub
        self._check_open()
        assert self._open_channel is not None, "checked by __init__"
        channel = self._open_channel(self._addresses[index])
        self._channels[index] = channel
        if self._closed:
            # close() ran meanwhile (from another thread) and may have missed this channel.
            await transport.close_channel(channel)
            raise ClientClosedError
        stub = rpc.MsgbusServiceStub(channel)
        self._stubs[index] = stub
        return stub

    async def _probe(self, index: int) -> HealthResponse:
        """One Health call on one endpoint, whichever is in use."""
        stub = await self._stub_at(index)
        try:
            response = await stub.Health(pb.HealthRequest(), timeout=self._timeout)
        except transport.RpcError as exc:
            raise self._translate(exc) from None
        except transport.CANCELLATIONS as exc:
            if self._closed_under(exc):
                raise ClientClosedError from None
            raise
        return convert.health(response)

    def _use(self, index: int, health: HealthResponse) -> None:
        self._node = health.node
        self._current = index

    async def _use_first_answering(self) -> None:
        """Use the first endpoint, in order, that answers SERVING, else the first that answers.

        A single endpoint fails with its own error. An endpoint that answers with a lasting
        error (UNAUTHENTICATED, UNIMPLEMENTED, ...) fails the connection: the settings are the
        same for every endpoint, so the next ones would refuse it too.
        """
        failures: list[str] = []
        answered: tuple[int, HealthResponse] | None = None
        for index, endpoint in enumerate(self._endpoints):
            try:
                health = await self._probe(index)
            except TransientError as error:
                if len(self._endpoints) == 1:
                    raise
                failures.append(f"{endpoint}: {error}")
                continue
            if health.status == "SERVING":
                answered = (index, health)
                break
            failures.append(f"{endpoint}: {health.status}")
            answered = answered or (index, health)
        if answered is None:
            raise UnavailableError(
                f"no endpoint answers: {'; '.join(failures)}", StatusCode.UNAVAILABLE
            )
        self._use(*answered)
        if failures:
            _log.info("connected to %s; %s", self.endpoint, "; ".join(failures))

    async def _fail_over(self, failed: int, error: MsgbusError) -> bool:
        """Move off endpoint ``failed`` if ``error`` says it is unavailable; whether it did.

        The client then uses the next endpoint, round robin, that answers SERVING to a Health
        check; ``failed`` itself is checked last, and stays in use if none answers. Calls that
        fail together on one endpoint wait for one failover: the first does the checks, the
        others find the client already moved. With a single endpoint there is nothing to do.
        """
        if len(self._endpoints) == 1 or not isinstance(error, UnavailableError):
            return False
        async with self._failover_lock:
            if self._current != failed or self._closed:
                return not self._closed
            count = len(self._endpoints)
            failures: list[str] = []
            for step in range(1, count + 1):
                index = (failed + step) % count
                try:
                    health = await self._probe(index)
                except ClientClosedError:
                    return False
                except MsgbusError as problem:
                    failures.append(f"{self._endpoints[index]}: {problem}")
                    continue
                if health.status == "SERVING":
                    self._use(index, health)
                    _log.warning(
                        "endpoint %s is unavailable (%s); failing over to %s",
                        self._endpoints[failed],
                        error,
                        self._endpoints[index],
                    )
                    return True
                failures.append(f"{self._endpoints[index]}: {health.status}")
            _log.warning(
                "endpoint %s is unavailable (%s) and no endpoint answers SERVING: %s",
                self._endpoints[failed],
                error,
                "; ".join(failures),
            )
            return True

    async def _read(
        self,
        method: Callable[[MsgbusServiceAsyncStub], Callable[..., Awaitable[_Resp]]],
        request: object,
    ) -> _Resp:
        """A unary read: retried on the next endpoint when the one in use is unavailable."""
        return await self._unary(method, request, idempotent=True)

    async def _write(
        self,
        method: Callable[[MsgbusServiceAsyncStub], Callable[..., Awaitable[_Resp]]],
        request: object,
    ) -> _Resp:
        """A unary write: never sent twice (see :meth:`_unary`)."""
        return await self._unary(method, request, idempotent=False)

    async def _unary(
        self,
        method: Callable[[MsgbusServiceAsyncStub], Callable[..., Awaitable[_Resp]]],
        request: object,
        *,
        idempotent: bool,
    ) -> _Resp:
        """One unary call of ``method`` (of the stub of the endpoint in use), with failover.

        An endpoint found unavailable moves the client on (:meth:`_fail_over`). The call then
        goes to the new endpoint if it is ``idempotent`` (a read), or if gRPC says it never
        left the client; each endpoint is tried once. A write that may have reached the daemon
        raises the UnavailableError instead: sending it again could store it twice.
        """
        tried: set[int] = set()
        while True:
            self._check_open()
            index, stub = self._route()
            try:
                return await method(stub)(request, timeout=self._timeout)
            except transport.RpcError as exc:
                error = self._translate(exc)
                resend = idempotent or never_sent(exc)
            except transport.CANCELLATIONS as exc:
                if self._closed_under(exc):
                    raise ClientClosedError from None
                raise
            tried.add(index)
            if not await self._fail_over(index, error) or not resend or self._current in tried:
                raise error

    async def health(self) -> HealthResponse:
        """The daemon's liveness (``status`` is ``"SERVING"``) and its node identity."""
        return convert.health(await self._read(lambda stub: stub.Health, pb.HealthRequest()))

    async def ready(self) -> ReadyResponse:
        """Whether the daemon's store answers (``ready``), with the error when it does not."""
        return convert.ready(await self._read(lambda stub: stub.Ready, pb.ReadyRequest()))

    async def publish(
        self,
        topic: str,
        payload: Payload,
        headers: Mapping[str, str] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> MessageEnvelope:
        """Append a message to the local log of ``topic``; returns it once durably stored.

        Exactly once: the publish carries ``idempotency_key``, or, when it is ``None``, a random
        key of the client's (unless connected with ``auto_idempotency=False``), and is retried
        with that key on UNAVAILABLE and DEADLINE_EXCEEDED until ``publish_retry_deadline``
        (see :meth:`connect`). A key the daemon already holds for ``topic`` (within its
        ``--dedup-window``) returns the message stored then, for which :func:`is_duplicate` is
        true, and stores nothing. Pass a key of your own (at most 128 UTF-8 bytes, no control
        characters) to make a publish repeated by the application itself, after its own
        restart say, a duplicate too.

        Publishes that run concurrently on this client are coalesced: the ones issued while
        earlier ones are in flight travel together in one PublishBatch call, which the daemon
        commits in one transaction. A publish on an otherwise idle client goes out at once as
        a plain Publish, so a sequential publisher never waits for company. Either way each
        call returns its own envelope or raises its own error, exactly as a lone Publish
        would: an invalid message fails alone and the others are stored. Publishes awaited
        one after the other keep their order in the log.

        Raises:
            InvalidArgumentError: a malformed topic, or a payload, headers or idempotency key
                over the limits.
            PermissionDeniedError: a ``$msgbus.`` topic, or a default origin that is not the
                daemon's node.
        """
        key = idempotency_key
        if key is None and self._auto_idempotency:
            key = new_key()
        request = requests.publish(topic, payload, headers, self._default_origin, key or "")
        self._check_open()
        if self._coalescer is not None:  # async-only
            return await self._coalescer.publish(request)  # async-only
        return published(await self._send_publish(request))

    async def publish_batch(self, entries: Iterable[BatchEntry]) -> list[MessageEnvelope]:
        """Publish several messages, to one or several topics, in one atomic transaction.

        ``entries`` are :class:`PublishEntry` values or plain ``(topic, payload)`` and
        ``(topic, payload, headers)`` tuples, validated like :meth:`publish`. Each entry gets
        its ``PublishEntry.idempotency_key``, or a random one as :meth:`publish` does, and a
        batch whose entries all carry a key is retried like a publish; an entry whose key the
        daemon already holds returns the message stored then (:func:`is_duplicate`). Returns one
        envelope per entry, in order; entries for the same topic get consecutive head_ids in
        that order. All or nothing: if any entry is invalid nothing is stored, and the error
        names the entry: for the topic of the fourth entry, its ``index`` is 3 and its
        ``field`` is ``"entries[3].topic"``. An empty ``entries`` returns ``[]`` without
        calling the daemon. The daemon accepts up to 10,000 entries and, by default, 32 MiB
        per call.

        Raises:
            InvalidArgumentError: an entry is malformed or over the limits, or there are more
                than 10,000 entries.
            PermissionDeniedError: an entry's topic is reserved, or the default origin is not
                the daemon's node.
            UnimplementedError: the daemon predates PublishBatch (an original daemon).
        """
        make_key = new_key if self._auto_idempotency else None
        request = requests.publish_batch(entries, self._default_origin, make_key)
        if not request.entries:
            return []
        response = await self._send_publish_batch(request)
        if len(response.messages) != len(request.entries):
            raise ProtocolError(
                f"server answered {len(response.messages)} envelopes "
                f"for a batch of {len(request.entries)}"
            )
        return published_batch(response)

    async def _send_publish(self, request: pb.PublishRequest) -> pb.PublishResponse:
        """One Publish; resent until the retry deadline when it carries a key."""
        return await self._exactly_once([request], lambda: self._publish_rpc(request))

    async def _send_publish_batch(self, request: BatchRequest) -> BatchAnswer:
        """One PublishBatch; resent until the retry deadline when every entry carries a key."""
        return await self._exactly_once(request.entries, lambda: self._publish_batch_rpc(request))

    async def _exactly_once(
        self, entries: Sequence[pb.PublishRequest], send: Callable[[], Awaitable[_Resp]]
    ) -> _Resp:
        """``send()``, and again after UNAVAILABLE or DEADLINE_EXCEEDED if every entry is keyed.

        Resending is safe only with keys: the daemon answers a repeated key with the message
        stored the first time. A publish without one may have been stored before its answer
        was lost, so it is sent once (see :mod:`msgbus_sdk._idempotency`). Keys are held by
        the store of the node that took the publish, so it is resent only while the client
        talks to that node (the processes of one hub share its node and its database); after
        a failover to another node the error is raised, as for a publish without a key.
        """
        if not keyed(entries) or not self._publish_retry_deadline:
            return await send()
        node = self._node
        started = time.monotonic()
        # The first attempt runs outside tenacity: a retrying object and its iteration per
        # publish cost more than the rest of the client's own work on it. Tenacity still rules
        # on a failure: it is replayed to tenacity as the first attempt, which then decides
        # whether to retry, how long to wait and when to stop, counted from the first attempt.
        try:
            return await send()
        except Exception as error:
            first_failure: Exception | None = error

        def same_node(_: BaseException) -> bool:
            return self._node == node

        retrying = tenacity.AsyncRetrying(
            wait=RETRY_WAIT,
            stop=tenacity.stop_after_delay(
                self._publish_retry_deadline - (time.monotonic() - started)
            ),
            retry=RETRY_ON & tenacity.retry_if_exception(same_node),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure is not None:
                    replayed, first_failure = first_failure, None
                    raise replayed
                return await send()
        raise AssertionError("unreachable: tenacity either returns or raises")

    @property
    def publishes_over_stream(self) -> bool:
        """Whether publishes to the endpoint in use travel on a PublishStream.

        ``False`` when connected with ``publish_stream=False``, and once the endpoint's daemon
        answered that it has no PublishStream (an original daemon, or one from before it).
        """
        return self._publish_stream and self._current not in self._unary_endpoints

    async def _publish_rpc(self, request: pb.PublishRequest) -> pb.PublishResponse:
        answer = await self._stream_write(pb.PublishStreamRequest(publish=request))
        if answer is None:
            return await self._write(lambda stub: stub.Publish, request)
        return pb.PublishResponse(
            message=answer.messages[0] if answer.messages else None,
            duplicate=bool(answer.duplicates) and answer.duplicates[0],
        )

    async def _publish_batch_rpc(self, request: BatchRequest) -> BatchAnswer:
        on_stream = (
            request
            if isinstance(request, pb.PublishStreamRequest)
            else pb.PublishStreamRequest(entries=request.entries)
        )
        answer = await self._stream_write(on_stream)
        if answer is not None:
            return answer
        unary = (
            request
            if isinstance(request, pb.PublishBatchRequest)
            else pb.PublishBatchRequest(entries=request.entries)
        )
        return await self._write(lambda stub: stub.PublishBatch, unary)

    async def _stream_write(
        self, request: pb.PublishStreamRequest
    ) -> pb.PublishStreamResponse | None:
        """A publish on the PublishStream of the endpoint in use; failover as in :meth:`_unary`.

        None when it must go as a unary call instead: streams are off, the endpoint's daemon
        has no PublishStream (UNIMPLEMENTED, remembered for the endpoint), or the daemon
        refused the request as invalid or not permitted. Nothing of a refused request was
        stored, and the unary call answers the same refusal with its details (the field).
        """
        tried: set[int] = set()
        while self._publish_stream:
            self._check_open()
            index, stub = self._route()
            if index in self._unary_endpoints:
                return None
            publisher = self._publishers[index]
            if publisher is None:
                publisher = self._publishers[index] = StreamPublisher()
            try:
                answer = await publisher.send(stub, request, self._timeout)
            except transport.RpcError as exc:
                if exc.code() is transport.GrpcStatus.UNIMPLEMENTED:
                    # An unknown RPC stores nothing: this request and the next go unary.
                    self._unary_endpoints.add(index)
                    return None
                error = self._translate(exc)
                resend = never_sent(exc)
            except UnavailableError as ended:
                error, resend = ended, False
            except transport.CANCELLATIONS as exc:
                if self._closed_under(exc):
                    raise ClientClosedError from None
                raise
            else:
                if not answer.error_code:
                    return answer
                if answer.error_code in _REFUSED_WITH_DETAILS:
                    return None
                raise stream_refusal(answer.error_code, answer.error_message)
            if self._closed:
                raise ClientClosedError
            tried.add(index)
            if not await self._fail_over(index, error) or not resend or self._current in tried:
                raise error
        return None

    async def fetch(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        limit: int = 100,
    ) -> list[MessageEnvelope]:
        """One page of a log, in head order, starting at ``from_head_id``.

        At most ``limit`` messages (the daemon caps it at 10,000); use :meth:`iter_fetch` for
        longer ranges.

        ``origin`` names the log's origin (``None``: the default origin, else the daemon's node).
        An unknown log gives an empty list. Below the log's first head (retention trimmed the
        messages before it) the page starts at the first head; compare the first message's
        ``head_id`` with ``from_head_id`` to see that.
        """
        request = requests.fetch(topic, self._origin(origin), from_head_id, limit)
        return [env async for env in self._fetch_page(request)]

    async def _fetch_page(self, request: pb.FetchRequest) -> AsyncIterator[MessageEnvelope]:
        """One Fetch page, with failover: a read, retried on the next endpoint.

        A stream that breaks because its endpoint is unavailable goes on at the next endpoint
        from the head after the last one yielded, on the same log (its origin as the yielded
        envelopes name it), so the page has no gap and no duplicate.
        """
        # The contract reads a limit of 0 as 100, and caps it.
        limit = min(request.limit or _FETCH_DEFAULT_LIMIT, requests.MAX_PAGE)
        last: MessageEnvelope | None = None
        yielded = 0
        tried: set[int] = set()
        while True:
            self._check_open()
            index, stub = self._route()
            try:
                async for env in self._fetch_stream(stub, request):
                    last, yielded = env, yielded + 1
                    yield env
                return
            except UnavailableError as error:
                tried.add(index)
                moved = await self._fail_over(index, error)
                if yielded >= limit:
                    return  # the whole page arrived before the stream broke
                if not moved or self._current in tried:
                    raise
            if last is not None:
                request = _fetch_after(request, last, limit - yielded)

    async def _fetch_stream(
        self, stub: MsgbusServiceAsyncStub, request: pb.FetchRequest
    ) -> AsyncIterator[MessageEnvelope]:
        """One Fetch call on one endpoint."""
        call = stub.Fetch(request, timeout=self._timeout)
        try:
            async for response in call:
                for env in convert.fetch_envelopes(response):
                    yield env
        except transport.RpcError as exc:
            raise self._translate(exc) from None
        except transport.CANCELLATIONS as exc:
            if self._closed_under(exc):
                raise ClientClosedError from None
            raise
        finally:
            transport.cancel(call)

    async def iter_fetch(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        to_head_id: int | None = None,
        *,
        page_size: int = 1000,
    ) -> AsyncIterator[MessageEnvelope]:
        """Iterate over a log from ``from_head_id``, one Fetch page at a time.

        The range ends at ``to_head_id`` (inclusive; ``None``: the head at the time the last
        page is read). Memory stays bounded by one page whatever the range. Stops early if you
        stop iterating. Heads that retention trimmed are not there: the iteration starts at
        the log's first head when ``from_head_id`` is below it.
        """
        size = requests.page_size(page_size)
        next_head = max(from_head_id, 1)
        origin = self._origin(origin)
        while to_head_id is None or next_head <= to_head_id:
            limit = size if to_head_id is None else min(size, to_head_id - next_head + 1)
            count = 0
            async for env in self._fetch_page(requests.fetch(topic, origin, next_head, limit)):
                if to_head_id is not None and env.head_id > to_head_id:
                    # A page below a trimmed prefix starts at the first head, so a full
                    # page can reach past the range.
                    return
                count += 1
                next_head = env.head_id + 1
                # The next pages name the log the first one read, even after a failover to a
                # daemon of another node.
                origin = env.origin if origin is None else origin
                yield env
            # The daemon returns a full page whenever more messages exist (limit <= 10,000),
            # so a short page means the head was reached.
            if count < limit:
                return

    @overload
    def subscribe(
        self,
        topic: str,
        origin: NodeLike | None = ...,
        from_head_id: int = ...,
        replay_limit: int = ...,
        reconnect: bool | ReconnectPolicy = ...,
        *,
        on_trim: TrimPolicy = ...,
        durable: None = ...,
        auto_commit: None = ...,
    ) -> AsyncSubscription: ...

    @overload
    def subscribe(
        self,
        topic: str,
        origin: NodeLike | None = ...,
        from_head_id: int = ...,
        replay_limit: int = ...,
        reconnect: bool | ReconnectPolicy = ...,
        *,
        on_trim: TrimPolicy = ...,
        durable: str,
        auto_commit: CommitPolicy | None = ...,
    ) -> AsyncDurableSubscription: ...

    def subscribe(
        self,
        topic: str,
        origin: NodeLike | None = None,
        from_head_id: int = 1,
        replay_limit: int = 100,
        reconnect: bool | ReconnectPolicy = True,
        *,
        on_trim: TrimPolicy = "continue",
        durable: str | None = None,
        auto_commit: CommitPolicy | None = None,
    ) -> AsyncSubscription | AsyncDurableSubscription:
        """Follow a log: replay it from ``from_head_id``, then deliver new messages live.

        Returns an async iterator that never yields a head_id twice and never skips one,
        except heads that retention trimmed before delivery. ``replay_limit`` is the daemon's
        replay page size, not a cap on delivery. With ``reconnect`` (``True``, or a
        :class:`ReconnectPolicy` for custom backoff and attempts), a broken stream is reopened
        at the last delivered head_id + 1, across daemon restarts, and on the next endpoint
        when the client has several and the one in use is gone; with ``False`` the first
        error ends the iteration. Closing the client ends the iteration; subscribing on a
        closed client raises :class:`ClientClosedError`.

        When the daemon says the log now starts above the head expected next (retention
        trimmed it, at the start or while the subscription lagged behind), ``on_trim`` decides:
        ``"continue"`` logs one warning on the ``msgbus_sdk`` logger and delivers on from the
        log's first head; ``"raise"`` raises :class:`TrimmedError`; a callable receives the
        :class:`Trim` and delivery goes on when it returns. Either way the subscription's
        ``trims`` counts it. A jump the daemon does not explain is a gap, repaired by
        reopening the stream.

        With ``durable=NAME`` the subscription is a durable consumer, an
        :class:`AsyncDurableSubscription`: it resumes after the daemon's cursor (NAME, topic,
        origin) when one was committed (``from_head_id`` applies only before that), and
        commits processed heads there, with ``commit(message)`` or by ``auto_commit``, a
        :class:`CommitPolicy` (by count and by time). Without ``durable``, ``auto_commit``
        must be ``None``.

        Raises:
            ConfigurationError: ``on_trim`` is not one of the above, or ``auto_commit`` is
                given without ``durable``.
        """
        self._check_open()
        if auto_commit is not None and durable is None:
            raise ConfigurationError("auto_commit needs durable: the name to commit under")
        origin = self._origin(origin)
        if origin is None and len(self._endpoints) > 1:
            # Resumed on another endpoint, the subscription follows the same log, even if that
            # endpoint's daemon is another node.
            origin = self._node
        requests.subscribe(topic, origin, from_head_id, replay_limit)  # validate eagerly
        handle_trim = resolve_on_trim(on_trim)
        policy = resolve_reconnect(reconnect) if reconnect is not False else None

        def follow(start: int) -> AsyncSubscription:
            cursor = Cursor(start, handle_trim)

            def open_stream() -> tuple[int, transport.SubscribeCall]:
                index, stub = self._route()
                request = requests.subscribe(topic, origin, cursor.next_head_id, replay_limit)
                return index, stub.Subscribe(request)

            return AsyncSubscription(
                open_stream, cursor, policy, lambda: self._closed, self._fail_over
            )

        if durable is None:
            return follow(from_head_id)
        return AsyncDurableSubscription(
            self, durable, topic, origin, from_head_id, follow, auto_commit
        )

    @overload
    def subscribe_pattern(
        self,
        topic_pattern: str,
        origin_pattern: str | None = ...,
        from_head_id: int = ...,
        replay_limit: int = ...,
        reconnect: bool | ReconnectPolicy = ...,
        *,
        resume_after: Mapping[tuple[str, str], int] | None = ...,
        on_trim: TrimPolicy = ...,
        durable: None = ...,
        auto_commit: None = ...,
    ) -> AsyncSubscription: ...

    @overload
    def subscribe_pattern(
        self,
        topic_pattern: str,
        origin_pattern: str | None = ...,
        from_head_id: int = ...,
        replay_limit: int = ...,
        reconnect: bool | ReconnectPolicy = ...,
        *,
        resume_after: Mapping[tuple[str, str], int] | None = ...,
        on_trim: TrimPolicy = ...,
        durable: str,
        auto_commit: CommitPolicy | None = ...,
    ) -> AsyncDurableSubscription: ...

    def subscribe_pattern(
        self,
        topic_pattern: str,
        origin_pattern: str | None = None,
        from_head_id: int = 1,
        replay_limit: int = 100,
        reconnect: bool | ReconnectPolicy = True,
        *,
        resume_after: Mapping[tuple[str, str], int] | None = None,
        on_trim: TrimPolicy = "continue",
        durable: str | None = None,
        auto_commit: CommitPolicy | None = None,
    ) -> AsyncSubscription | AsyncDurableSubscription:
        """Follow every log whose topic matches ``topic_pattern``, of every origin.

        ``topic_pattern`` is a topic glob with the rule of retention rules and policies:
        ``*`` matches any text, dots included (``"telemetry.*"`` matches ``telemetry.cpu`` and
        ``telemetry.cpu.load``), ``?`` one character, ``[...]`` a set; ``origin_pattern``, a
        glob over ``"tenant_id/bl_name/device_id"`` (``"acme/*"``), narrows the origins.
        The logs are merged, each in its own head order with no gap and no duplicate, and logs
        that appear later are picked up live. Each message names its log (``topic`` and
        ``origin``). Logs start at ``from_head_id``, those in ``resume_after`` (``(topic,
        origin key) -> last head_id delivered``, e.g. an earlier subscription's ``positions``)
        just after it. A reconnect resumes every log exactly after its last delivered head.
        ``reconnect`` and ``on_trim`` are as for :meth:`subscribe`, per log.

        With ``durable=NAME`` it is a durable consumer of every log it follows (an
        :class:`AsyncDurableSubscription`, as :meth:`subscribe` makes): before the first
        message it loads NAME's cursors (``list_cursors``) and resumes each log after its
        cursor; processed heads are committed per log, by ``commit(message)`` or by
        ``auto_commit``.

        Raises:
            ConfigurationError: an empty ``topic_pattern``, a malformed origin key in
                ``resume_after``, ``on_trim`` not one of those of :meth:`subscribe`, or
                ``auto_commit`` without ``durable``.
        """
        self._check_open()
        if auto_commit is not None and durable is None:
            raise ConfigurationError("auto_commit needs durable: the name to commit under")
        given = dict(resume_after or {})
        # Validated eagerly, as subscribe does: a bad argument fails here, not at the first read.
        requests.subscribe_pattern(topic_pattern, origin_pattern, from_head_id, replay_limit, given)
        handle_trim = resolve_on_trim(on_trim)
        policy = resolve_reconnect(reconnect) if reconnect is not False else None

        def follow(resume: Mapping[tuple[str, str], int]) -> AsyncSubscription:
            cursor = LogCursors(from_head_id, handle_trim, resume)

            def open_stream() -> tuple[int, transport.SubscribeCall]:
                index, stub = self._route()
                request = requests.subscribe_pattern(
                    topic_pattern, origin_pattern, from_head_id, replay_limit, cursor.resume_after()
                )
                return index, stub.Subscribe(request)

            return AsyncSubscription(
                open_stream, cursor, policy, lambda: self._closed, self._fail_over
            )

        if durable is None:
            return follow(given)

        async def start(commits: DurableCommits) -> AsyncSubscription:
            resume = dict(given)
            async for stored in self.iter_cursors(durable):
                # The name's cursors on logs the pattern does not match are ignored by the
                # daemon; those it matches resume after the later of the two positions.
                key = (stored.topic, convert.node_key(stored.origin))
                commits.resumed(stored.topic, stored.origin, stored.head_id)
                resume[key] = max(resume.get(key, 0), stored.head_id)
            return follow(resume)

        return AsyncDurableSubscription(
            self, durable, topic_pattern, None, from_head_id, None, auto_commit, start
        )

    async def get_head(self, topic: str, origin: NodeLike | None = None) -> GetHeadResponse:
        """The head of a log: ``head_id`` and ``found`` (``{0, False}`` for an empty log).

        Also ``first_head_id``, the lowest head still held (above 1 once retention trimmed
        the log; 0 when it holds no message), and ``bytes``, the payload and header bytes it
        holds. A daemon that predates retention sends 0 for both.
        """
        request = requests.get_head(topic, self._origin(origin))
        return convert.get_head(await self._read(lambda stub: stub.GetHead, request))

    async def list_heads(self) -> list[TopicHead]:
        """The head of every log in the daemon's store, ordered by topic and origin: every page.

        Each :class:`TopicHead` has ``first_head_id`` and ``bytes`` as in :meth:`get_head`;
        the log holds ``head_id - first_head_id + 1`` messages when ``first_head_id`` > 0.
        See :meth:`iter_heads` to hold one page at a time, and :meth:`list_heads_changed` to
        list only the logs that changed.
        """
        heads: list[TopicHead] = []
        async for response in self._head_pages(requests.list_heads(requests.MAX_PAGE)):
            heads.extend(convert.topic_head(head) for head in response.heads)
        return heads

    async def iter_heads(self, *, page_size: int = 1000) -> AsyncIterator[TopicHead]:
        """Iterate over the head of every log, one ListHeads page at a time.

        Ordered by topic and origin; memory stays bounded by one page of at most ``page_size``
        (1 to 10,000) heads. The pages are keyset-paged: a log created meanwhile never makes
        one repeat or skip the others (it may or may not be listed). A daemon without paging
        answers every head in its first response, which ends the iteration.
        """
        async for response in self._head_pages(requests.list_heads(page_size)):
            for head in response.heads:
                yield convert.topic_head(head)

    async def list_heads_changed(self, cursor: str | None) -> HeadsChanged:
        """The heads of the logs that changed after ``cursor``, and the cursor for next time.

        ``cursor`` is the :attr:`HeadsChanged.cursor` of an earlier call, or ``None`` for a
        full listing now (every head, as :meth:`list_heads`) with the cursor to go on from. A
        log that changed several times is listed once, at its latest head; an idle daemon
        lists nothing, at the cost of one call however many logs it holds::

            listing = await bus.list_heads_changed(None)  # every head
            ...
            listing = await bus.list_heads_changed(listing.cursor)  # only what changed since

        A daemon that does not track changes (an original daemon) answers every head each
        time, with ``full`` set and ``cursor`` ``None``.

        Raises:
            CursorExpiredError: the daemon restarted since it gave the cursor; call again with
                ``None``.
            ConfigurationError: ``cursor`` is an empty string.
            InvalidArgumentError: ``cursor`` is not one the daemon gave (``field`` is
                ``"changed_since"``).
        """
        heads: list[TopicHead] = []
        cursors: list[str] = []
        async for response in self._head_pages(requests.list_heads(requests.MAX_PAGE, cursor)):
            heads.extend(convert.topic_head(head) for head in response.heads)
            cursors.append(response.cursor)
        if not cursors[-1]:
            # The daemon ignored changed_since (it tracks no changes), so it listed every head.
            return HeadsChanged(heads, None, full=True)
        if cursor is None:
            # Every page of a full listing carries the cursor of the listing's start. The first
            # page's is kept, so a listing that spans a daemon restart gives a cursor the new
            # run refuses (CursorExpiredError: list again), never one that misses changes.
            return HeadsChanged(heads, cursors[0], full=True)
        # Each page of changes carries a cursor that covers it and the pages before it.
        return HeadsChanged(heads, cursors[-1], full=False)

    async def _head_pages(
        self, request: pb.ListHeadsRequest
    ) -> AsyncIterator[pb.ListHeadsResponse]:
        """The ListHeads responses of one listing, from ``request`` until the last page."""
        while True:
            try:
                response = await self._read(lambda stub: stub.ListHeads, request)
            except ConflictError as error:
                # FAILED_PRECONDITION on ListHeads is the contract's answer to a cursor of an
                # earlier run of the daemon.
                if not request.changed_since:
                    raise
                raise CursorExpiredError(error.message, error.code, field=error.field) from None
            yield response
            if not response.next_page_token:
                return
            request = requests.next_heads_page(request, response.next_page_token)

    async def list_peer_sync_states(self) -> list[PeerSyncState]:
        """The daemon's persisted sync state, per peer and per log synced from it: every page.

        A log that is simply in sync with a peer has no state of its own; see
        :meth:`iter_peer_sync_states` to hold one page at a time.
        """
        return [state async for state in self.iter_peer_sync_states()]

    async def iter_peer_sync_states(self, *, page_size: int = 1000) -> AsyncIterator[PeerSyncState]:
        """Iterate over the daemon's sync states, one ListPeerSyncStates page at a time.

        Ordered by peer, topic and origin; memory stays bounded by one page of at most
        ``page_size`` (1 to 10,000) states. A daemon without paging answers every state in its
        first response, which ends the iteration.
        """
        request = pb.ListPeerSyncStatesRequest(page_size=requests.page_size(page_size))
        while True:
            response = await self._read(lambda stub: stub.ListPeerSyncStates, request)
            for state in response.states:
                yield convert.peer_sync_state(state)
            if not response.next_page_token:
                return
            request = pb.ListPeerSyncStatesRequest(
                page_size=page_size, page_token=response.next_page_token
            )

    async def commit_cursor(
        self, name: str, topic: str, head_id: int, origin: NodeLike | None = None
    ) -> StoredCursor:
        """Store the durable cursor (name, topic, origin) at ``head_id``: durable on return.

        ``head_id`` is the last head the consumer ``name`` processed; it resumes at
        ``head_id + 1``. Cursors are local to the daemon and never replicated.

        Raises:
            ConflictError: ``head_id`` is above the log's head (FAILED_PRECONDITION).
            ResourceExhaustedError: the daemon keeps its ``--max-cursors`` already.
            InvalidArgumentError: ``name`` or ``topic`` is invalid (``field`` names it).
        """
        request = requests.commit_cursor(name, topic, self._origin(origin), head_id)
        # Storing the same head twice changes nothing, so a commit may be sent again on
        # failover like a read.
        response = await self._read(lambda stub: stub.CommitCursor, request)
        return cursors.cursor(response.cursor)

    async def get_cursor(
        self, name: str, topic: str, origin: NodeLike | None = None
    ) -> StoredCursor | None:
        """The durable cursor (name, topic, origin), or ``None`` when none was committed."""
        request = pb.GetCursorRequest(
            name=name, topic=topic, origin=convert.to_pb_node(self._origin(origin))
        )
        response = await self._read(lambda stub: stub.GetCursor, request)
        return cursors.cursor(response.cursor) if response.found else None

    async def list_cursors(self, name: str | None = None) -> list[StoredCursor]:
        """Every durable cursor (of ``name`` when given), by name, topic and origin."""
        return [stored async for stored in self.iter_cursors(name)]

    async def iter_cursors(
        self, name: str | None = None, *, page_size: int = 1000
    ) -> AsyncIterator[StoredCursor]:
        """Iterate over the durable cursors (of ``name``), one ListCursors page at a time.

        Ordered by name, topic and origin; memory stays bounded by one page of at most
        ``page_size`` (1 to 10,000) cursors.
        """
        size = requests.page_size(page_size)
        request = requests.list_cursors(name, size)
        while True:
            response = await self._read(lambda stub: stub.ListCursors, request)
            for stored in response.cursors:
                yield cursors.cursor(stored)
            if not response.next_page_token:
                return
            request = requests.list_cursors(name, size, response.next_page_token)

    async def delete_cursor(
        self, name: str, topic: str | None = None, origin: NodeLike | None = None
    ) -> int:
        """Delete the cursor (name, topic, origin), or every cursor of ``name`` without topic.

        Returns how many cursors were deleted.
        """
        request = pb.DeleteCursorRequest(
            name=name,
            topic=topic or "",
            origin=convert.to_pb_node(self._origin(origin)) if topic else None,
        )
        return (await self._read(lambda stub: stub.DeleteCursor, request)).deleted_count

    async def delete_range(
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
        response = await self._write(lambda stub: stub.DeleteRange, request)
        return response.deleted_count

    async def enqueue_fifo(
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
        return convert.require_fifo(await self._write(lambda stub: stub.EnqueueFifo, request))

    async def peek_fifo(self, queue: str) -> FifoMessage | None:
        """The front of a FIFO queue, or ``None`` when the queue is empty."""
        try:
            response = await self._read(lambda stub: stub.PeekFifo, pb.PeekFifoRequest(queue=queue))
        except NotFoundError:
            # The contract answers NOT_FOUND for an empty queue; that is not an error here.
            return None
        return convert.require_fifo(response)

    async def ack_fifo(self, queue: str, message_id: str) -> bool:
        """Remove the front message; ``False`` (nothing changes) if it is not ``message_id``."""
        request = pb.AckFifoRequest(queue=queue, message_id=message_id)
        return (await self._write(lambda stub: stub.AckFifo, request)).accepted

    async def reject_fifo(self, queue: str, message_id: str) -> bool:
        """Count a failed attempt on the front message, which stays at the front.

        Returns ``False`` (nothing changes) if the front is not ``message_id``.
        """
        request = pb.RejectFifoRequest(queue=queue, message_id=message_id)
        return (await self._write(lambda stub: stub.RejectFifo, request)).accepted

    # -- FIFO leases: several workers drain one queue in parallel -----------------------------

    async def lease_fifo(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        visibility_ms: int = 0,
        wait_ms: int = 0,
    ) -> list[FifoLease]:
        """Lease up to ``max_messages`` (1 to 1,000) messages nobody holds, in FIFO order.

        Each lease holds its message for ``visibility_ms`` (0: 30 s; at most 12 h): ack,
        reject or extend it by its ``lease_id`` before then, or the message becomes available
        again with one more attempt. With ``wait_ms`` (at most 60 s, and below the client's
        timeout) the call waits for a message when none is available; an empty list means
        none came.
        """
        request = pb.LeaseFifoRequest(
            queue=queue, max_messages=max_messages, visibility_ms=visibility_ms, wait_ms=wait_ms
        )
        response = await self._write(lambda stub: stub.LeaseFifo, request)
        return [fifo_leases.fifo_lease(lease) for lease in response.leases]

    async def ack_fifo_lease(self, queue: str, lease_id: str) -> bool:
        """Remove a leased message; ``False`` when the lease ran out or is unknown."""
        request = pb.AckFifoLeaseRequest(queue=queue, lease_id=lease_id)
        return (await self._write(lambda stub: stub.AckFifoLease, request)).accepted

    async def reject_fifo_lease(self, queue: str, lease_id: str) -> RejectFifoLeaseResponse:
        """End a lease as a failed attempt: the message is available again with attempts + 1.

        ``dead_lettered`` says the attempt reached the queue's max_attempts and the message
        moved to ``QUEUE.dead``; ``accepted`` is ``False`` when the lease was not held.
        """
        request = pb.RejectFifoLeaseRequest(queue=queue, lease_id=lease_id)
        response = await self._write(lambda stub: stub.RejectFifoLease, request)
        return RejectFifoLeaseResponse(
            accepted=response.accepted, dead_lettered=response.dead_lettered
        )

    async def extend_fifo_lease(self, queue: str, lease_id: str, visibility_ms: int = 0) -> int:
        """Keep a held lease ``visibility_ms`` (0: 30 s) from now; the new expiry in ms.

        Returns 0 when the lease had run out or is unknown (the message may be someone
        else's by now).
        """
        request = pb.ExtendFifoLeaseRequest(
            queue=queue, lease_id=lease_id, visibility_ms=visibility_ms
        )
        response = await self._write(lambda stub: stub.ExtendFifoLease, request)
        return response.expires_at_ms if response.accepted else 0

    async def list_fifo(self, queue: str) -> list[FifoMessage]:
        """Every message of a queue in sequence order, leased ones included."""
        return [message async for message in self.iter_fifo(queue)]

    async def iter_fifo(self, queue: str, *, page_size: int = 100) -> AsyncIterator[FifoMessage]:
        """Iterate over a queue's messages, one ListFifo page (1 to 1,000) at a time.

        ``dead_reason`` is set on the messages of a dead-letter queue ``QUEUE.dead``, and
        ``leased_until_ms`` on leased ones.
        """
        size = requests.page_size(page_size)
        request = pb.ListFifoRequest(queue=queue, page_size=size)
        while True:
            response = await self._read(lambda stub: stub.ListFifo, request)
            for message in response.messages:
                yield convert.fifo_message(message)
            if not response.next_page_token:
                return
            request = pb.ListFifoRequest(
                queue=queue, page_size=size, page_token=response.next_page_token
            )

    async def redrive_fifo(self, queue: str, max_messages: int = 0) -> int:
        """Move the dead letters of ``QUEUE.dead`` back to the back of ``queue``.

        They get attempts 0. ``max_messages`` 0 moves all of them, in atomic batches of
        1,000. Returns how many moved.
        """
        request = pb.RedriveFifoRequest(queue=queue, max_messages=max_messages)
        return (await self._write(lambda stub: stub.RedriveFifo, request)).moved_count

    def work(
        self,
        queue: str,
        *,
        concurrency: int = 8,
        visibility_ms: int = fifo_leases.DEFAULT_VISIBILITY_MS,
    ) -> AsyncWorker:
        """Jobs leased from ``queue``, at most ``concurrency`` running at once.

        ``async for job in bus.work(queue)`` yields :class:`AsyncJob` s; ``async with job:``
        acks the job when its block succeeds and rejects it when the block raises. Run jobs
        in tasks to process up to ``concurrency`` at a time; while a job runs its lease is
        extended, every third of ``visibility_ms``.
        """
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
        if not 1_000 <= visibility_ms <= 43_200_000:
            raise ConfigurationError(
                f"visibility_ms must be between 1000 and 43200000, got {visibility_ms}"
            )
        wait_ms = fifo_leases.poll_ms(self._timeout)
        return AsyncWorker(self, queue, concurrency, visibility_ms, wait_ms)
