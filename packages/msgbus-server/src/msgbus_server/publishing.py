"""The publish path: validation, op building and durable submission of application publishes.

Publish, PublishBatch and every request of a PublishStream go through `PublishPath`, so a
message is checked, built (its id, its timestamp, its idempotency key) and refused in exactly
one way whichever RPC carried it. A publish is answered only after its transaction is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from msgbus_core.errors import InvalidArgumentError, PermissionDeniedError
from msgbus_core.model import EMPTY_HEADERS, Message, NodeId
from msgbus_core.ops import AppendOp, Outcome
from msgbus_core.publish_keys import DuplicatePublish, validate_idempotency_key
from msgbus_core.validation import (
    ensure_application_topic,
    validate_headers,
    validate_payload,
    validate_topic,
)
from msgbus_proto import pb
from msgbus_server import convert
from msgbus_server.clock import now_ms
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.ids import new_id
from msgbus_server.pipeline import CommitPipeline

MAX_BATCH_ENTRIES: Final = 10_000
"""The most entries one PublishBatch (or one batch request of a PublishStream) holds."""

VALID_TOPIC_CACHE: Final = 4096
"""How many validated topics the publish path remembers before starting over."""


@dataclass(slots=True)
class Stored:
    """What one publish or batch stored, once durable."""

    messages: list[Message]
    """Per op, in order: the message stored, or for a repeated idempotency key the message
    stored the first time (nothing new was written)."""
    duplicates: list[bool]
    """Per op: whether its idempotency key repeated an earlier publish."""
    keyed: bool
    """Whether any op carried an idempotency key (a batch answers its flags only then)."""


class _Envelopes(Protocol):
    def add(self) -> pb.MessageEnvelope: ...


class _StoredResponse(Protocol):
    """PublishBatchResponse and PublishStreamResponse: envelopes and duplicate flags."""

    @property
    def messages(self) -> _Envelopes: ...

    @property
    def duplicates(self) -> MutableSequence[bool]: ...


class PublishPath:
    """Turns publish requests into append ops and commits them through the pipeline."""

    def __init__(
        self,
        *,
        node: NodeId,
        pipeline: CommitPipeline,
        max_payload_bytes: int,
        disk_budget: DiskBudget | None = None,
    ) -> None:
        self._node = node
        self._pipeline = pipeline
        self._max_payload = max_payload_bytes
        self._disk_budget = disk_budget
        self._valid_topics: dict[str, None] = {}
        """Topics already validated for writing; the same few topics arrive again and again."""

    def append_op(self, request: pb.PublishRequest, created_at_ms: int) -> AppendOp:
        """Validate one publish (in the original's order) and build its append op."""
        topic = request.topic
        if topic not in self._valid_topics:
            validate_topic(topic)
            ensure_application_topic(topic)
            if len(self._valid_topics) >= VALID_TOPIC_CACHE:
                self._valid_topics.clear()
            self._valid_topics[topic] = None
        origin = (
            owned_origin(self._node, True, request.origin)
            if request.HasField("origin")
            else self._node
        )
        payload = request.payload
        if len(payload) > self._max_payload:
            validate_payload(payload, self._max_payload)
        headers = validate_headers(request.headers) if request.headers else EMPTY_HEADERS
        key = request.idempotency_key
        if key:
            validate_idempotency_key(key)
        return AppendOp(topic, origin, payload, headers, new_id(), created_at_ms, key)

    def single(self, request: pb.PublishRequest) -> list[AppendOp]:
        """The op of one Publish, validated and admitted by the disk budget."""
        op = self.append_op(request, now_ms())
        self._admit(len(op.payload))
        return [op]

    def batch(self, entries: Sequence[pb.PublishRequest]) -> list[AppendOp]:
        """The ops of one atomic batch of 1 to MAX_BATCH_ENTRIES entries, all validated first.

        An invalid entry (named by its index) refuses the whole batch before anything is
        submitted, so nothing of it is stored.
        """
        count = len(entries)
        if not 1 <= count <= MAX_BATCH_ENTRIES:
            raise InvalidArgumentError(
                f"entries has {count} items; a batch holds 1 to {MAX_BATCH_ENTRIES}",
                field="entries",
            )
        # One timestamp for the batch: its entries commit in one transaction.
        created_at_ms = now_ms()
        ops = []
        for index, entry in enumerate(entries):
            try:
                ops.append(self.append_op(entry, created_at_ms))
            except (InvalidArgumentError, PermissionDeniedError) as error:
                # Field names are built only on failure: the error names the entry.
                raise error.in_entry(index) from None
        self._admit(sum(len(op.payload) for op in ops))
        return ops

    def begin(
        self, ops: Sequence[AppendOp], future: asyncio.Future[list[Outcome]] | None = None
    ) -> asyncio.Future[list[Outcome]]:
        """Queue validated ops for one transaction now; pass what it gives to `stored`.

        `future`: resolve this pending future instead of a new one (`CommitPipeline.begin`).
        """
        return self._pipeline.begin(ops, future)

    async def publish(self, request: pb.PublishRequest) -> tuple[Message, bool]:
        """One Publish, answered once durable: its message and whether it was a duplicate."""
        ops = self.single(request)
        result = stored(ops, await self.begin(ops))
        return result.messages[0], result.duplicates[0]

    async def publish_batch(self, entries: Sequence[pb.PublishRequest]) -> Stored:
        """One PublishBatch, all or nothing, answered once durable."""
        ops = self.batch(entries)
        return stored(ops, await self.begin(ops))

    def _admit(self, incoming_bytes: int) -> None:
        """Refuse a write when the disk budget says so (`--discard new`); else count it."""
        if self._disk_budget is not None:
            self._disk_budget.check_writable(incoming_bytes)


def owned_origin(node: NodeId, present: bool, value: pb.NodeId, field: str = "origin") -> NodeId:
    """A write's origin (the local node when absent); PERMISSION_DENIED for another node's."""
    origin = convert.node_or_local(present, value, node, field)
    if origin != node:
        raise PermissionDeniedError(
            f"{field} {origin.key} belongs to another node: "
            f"writes must use the local daemon origin {node.key}"
        )
    return origin


def stored(ops: Sequence[AppendOp], outcomes: Sequence[Outcome]) -> Stored:
    """What the ops of one publish stored, from their outcomes; raises the first error."""
    result = Stored([], [], any(op.idempotency_key for op in ops))
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, DuplicatePublish):
            result.messages.append(outcome.message)
            result.duplicates.append(True)
        else:
            assert isinstance(outcome, Message)
            result.messages.append(outcome)
            result.duplicates.append(False)
    return result


def fill_stored(response: _StoredResponse, result: Stored) -> None:
    """Answer what a batch stored: its envelopes, and its duplicate flags when it was keyed."""
    add = response.messages.add
    for message in result.messages:
        convert.fill_envelope(add(), message)
    if result.keyed:
        response.duplicates.extend(result.duplicates)
