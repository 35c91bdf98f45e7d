"""Node ids the end-to-end tests give their daemons, in the core's and in the wire's spelling."""

from __future__ import annotations

from workloads.logs import DEFAULT_NODE, to_pb

from msgbus_core import NodeId
from msgbus_proto import pb

NODE = DEFAULT_NODE.key
"""`tenant/default/device`: the node a test daemon is unless told otherwise."""
LOCAL = to_pb(DEFAULT_NODE)
"""That node on the wire: the origin of everything a test publishes."""
OTHER = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="other")
"""Another node of the same business line: a test daemon may not write in its name."""


def node_id(name: str) -> NodeId:
    """`tenant/default/<name>`: the NodeId `peers.start_node` gives a daemon named `name`."""
    return NodeId("tenant", "default", name)
