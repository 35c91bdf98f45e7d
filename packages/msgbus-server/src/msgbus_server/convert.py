"""Conversion between the wire types (`msgbus_proto.pb`) and the core model.

These functions sit on the publish and subscribe hot paths, so they build protobuf messages
directly from core values (no intermediate dataclasses) and cache the wire form of NodeIds.
"""

from __future__ import annotations

import functools

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import FifoMessage, Message, NodeId, PeerSyncState, TopicHead
from msgbus_core.validation import validate_node_part
from msgbus_proto import pb
from msgbus_server.sync_state import direction_of

_MAX_CACHED_NODES = 4096
_pb_nodes: dict[NodeId, pb.NodeId] = {}


def node_to_pb(node: NodeId) -> pb.NodeId:
    """The wire NodeId; cached because every envelope carries one and there are few nodes.

    The cached object is only ever copied into other messages (protobuf copies sub-messages
    passed to constructors), never mutated.
    """
    cached = _pb_nodes.get(node)
    if cached is None:
        cached = pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)
        if len(_pb_nodes) >= _MAX_CACHED_NODES:
            _pb_nodes.clear()
        _pb_nodes[node] = cached
    return cached


def node_from_pb(value: pb.NodeId, field: str) -> NodeId:
    """A complete wire NodeId as a validated core NodeId; errors name `field.part`."""
    return NodeId(
        validate_node_part(f"{field}.tenant_id", value.tenant_id),
        validate_node_part(f"{field}.bl_name", value.bl_name),
        validate_node_part(f"{field}.device_id", value.device_id),
    )


def node_or_local(present: bool, value: pb.NodeId, local: NodeId, field: str) -> NodeId:
    """Resolve a request NodeId: absent or all-empty means the local node.

    A partly filled NodeId is INVALID_ARGUMENT naming the missing part.
    """
    if not present:
        return local
    if not (value.tenant_id or value.bl_name or value.device_id):
        return local
    if (
        value.tenant_id == local.tenant_id
        and value.bl_name == local.bl_name
        and value.device_id == local.device_id
    ):
        # The common case (an SDK that always names its daemon) skips re-validation.
        return local
    return node_from_pb(value, field)


def required_node(present: bool, value: pb.NodeId, field: str) -> NodeId:
    """A NodeId that must be given in full (the FIFO target)."""
    if not present:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if not (value.tenant_id or value.bl_name or value.device_id):
        raise InvalidArgumentError(
            f"{field} must be a complete NodeId (tenant_id, bl_name and device_id); it is empty",
            field=field,
        )
    return node_from_pb(value, field)


def envelope(message: Message) -> pb.MessageEnvelope:
    """The wire envelope of a stored message."""
    return fill_envelope(pb.MessageEnvelope(), message)


def fill_envelope(target: pb.MessageEnvelope, message: Message) -> pb.MessageEnvelope:
    """Write a stored message into an empty envelope, such as one from `repeated.add()`."""
    target.id = message.id
    target.topic = message.topic
    target.origin.CopyFrom(node_to_pb(message.origin))
    target.head_id = message.head_id
    target.payload = message.payload
    if message.headers:
        target.headers.update(message.headers)
    target.created_at_ms = message.created_at_ms
    target.deleted = message.deleted
    return target


@functools.lru_cache(maxsize=1024)
def _node(tenant_id: str, bl_name: str, device_id: str) -> NodeId:
    # Sync converts thousands of envelopes from a handful of origins; share their NodeIds.
    return NodeId(tenant_id, bl_name, device_id)


def message_from_envelope(value: pb.MessageEnvelope) -> Message:
    """A core message from a wire envelope (used by peer sync; validated by the store)."""
    # Catch-up converts every replicated message here, so it does the least per envelope: the
    # origin sub-message is fetched once, headers are copied only when there are any (copying
    # an empty protobuf map costs more than the rest of the envelope), and the arguments are
    # positional (Message's field order).
    origin = value.origin
    headers = value.headers
    return Message(
        value.id,
        value.topic,
        _node(origin.tenant_id, origin.bl_name, origin.device_id),
        value.head_id,
        value.payload,
        dict(headers) if headers else {},
        value.created_at_ms,
        value.deleted,
    )


def fifo_to_pb(message: FifoMessage) -> pb.FifoMessage:
    """The wire form of a FIFO message."""
    return pb.FifoMessage(
        id=message.id,
        queue=message.queue,
        topic=message.topic,
        source=node_to_pb(message.source),
        target=node_to_pb(message.target),
        payload=message.payload,
        headers=message.headers,
        created_at_ms=message.created_at_ms,
        sequence=message.sequence,
        attempts=message.attempts,
        dead_reason=message.dead_reason,
        leased_until_ms=message.leased_until_ms,
    )


def head_to_pb(head: TopicHead) -> pb.TopicHead:
    """The wire form of a log head."""
    return pb.TopicHead(
        topic=head.topic,
        origin=node_to_pb(head.origin),
        head_id=head.head_id,
        first_head_id=head.first_head_id,
        bytes=head.bytes,
    )


def sync_state_to_pb(state: PeerSyncState) -> pb.PeerSyncState:
    """The wire form of a sync state; a peer-level record has topic "" and no origin.

    The direction comes from how the record's peer is stored (`sync_state.direction_of`).
    """
    direction, peer = direction_of(state.peer)
    result = pb.PeerSyncState(
        peer=peer,
        direction=direction,
        topic=state.topic,
        local_head=state.local_head,
        remote_head=state.remote_head,
        last_synced_head=state.last_synced_head,
        last_attempt_at_ms=state.last_attempt_at_ms,
        last_success_at_ms=state.last_success_at_ms,
        consecutive_failures=min(state.consecutive_failures, 2**32 - 1),
        last_error=state.last_error,
    )
    if state.origin is not None:
        result.origin.CopyFrom(node_to_pb(state.origin))
    return result
