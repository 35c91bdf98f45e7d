"""Generated protobuf and gRPC code for the `msgbus.v1` contract.

The generated modules live in the top-level `msgbus.v1` package (protoc's absolute imports need
the proto package as the import root). This module re-exports them under stable names:

    from msgbus_proto import pb, rpc

    request = pb.PublishRequest(topic="events", payload=b"hi")
    stub = rpc.MsgbusServiceStub(channel)
"""

from msgbus.v1 import msgbus_pb2 as pb
from msgbus.v1 import msgbus_pb2_grpc as rpc

SERVICE_NAME = "msgbus.v1.MsgbusService"
"""The fully qualified name of the msgbus gRPC service."""

__all__ = ["SERVICE_NAME", "pb", "rpc"]
