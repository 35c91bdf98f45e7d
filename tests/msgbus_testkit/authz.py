"""Authorization tests' common parts: every RPC once, as one caller, and what a store holds.

`every_rpc` makes each of the 14 RPCs once against a log and a FIFO queue that hold messages
and answers each call's status code. The Unix-uid tests run it in a child process that drops to
another uid after importing what it needs (the interpreter may live where that uid cannot read):

    python -m msgbus_testkit.authz TARGET UID GID TOPIC QUEUE FRONT_ID NODE

prints the outcome as JSON. `store_rows` reads a SQLite store file the daemon is serving, so a
test can compare what it holds before and after the calls a policy refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from msgbus_core.model import NodeId
from msgbus_proto import pb, rpc
from msgbus_testkit.certificates import CertificateAuthority

RPCS = (
    "Health",
    "Ready",
    "Publish",
    "PublishBatch",
    "Fetch",
    "Subscribe",
    "GetHead",
    "CommitCursor",
    "GetCursor",
    "ListCursors",
    "DeleteCursor",
    "ListHeads",
    "ListPeerSyncStates",
    "DeleteRange",
    "EnqueueFifo",
    "PeekFifo",
    "RejectFifo",
    "AckFifo",
    "LeaseFifo",
    "ExtendFifoLease",
    "RejectFifoLease",
    "AckFifoLease",
    "ListFifo",
    "RedriveFifo",
)
"""Every RPC of msgbus.v1, in the order `every_rpc` makes them."""
CALL_TIMEOUT_S = 10.0
T = TypeVar("T")


@dataclass
class Outcome:
    """What each RPC answered (status code names), and the topics ListHeads showed."""

    codes: dict[str, str] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    """The status message of each call that failed."""
    cursors: list[str] = field(default_factory=list)
    """The cursor names ListCursors showed."""


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1, and client certificates by identity."""

    ca: CertificateAuthority
    directory: Path

    def server_args(self) -> list[str]:
        """msgbusd flags for mTLS with client certificates from this CA."""
        return [
            "--tls-cert",
            str(self.directory / "server.pem"),
            "--tls-key",
            str(self.directory / "server.key"),
            "--tls-client-ca",
            str(self.directory / "ca.pem"),
        ]

    def node_server_args(self, identity: str) -> list[str]:
        """`server_args` with a certificate that also names the node `identity` (SAN URI), as
        a pinned peer's must."""
        stem = f"node-{identity.replace('/', '-')}"
        cert, key = self.ca.issue_node(identity, hosts=["127.0.0.1"]).write(self.directory, stem)
        ca = str(self.directory / "ca.pem")
        return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", ca]

    def peer_args(self, identity: str) -> list[str]:
        """msgbusd flags that pull from peers over mTLS as `identity` (files in the directory)."""
        stem = identity.replace("/", "-")
        issued = self.ca.issue_client(stem, uris=[f"msgbus://{identity}"])
        cert, key = issued.write(self.directory, f"peer-{stem}")
        ca = str(self.directory / "ca.pem")
        return ["--peer-tls-ca", ca, "--peer-tls-cert", str(cert), "--peer-tls-key", str(key)]

    def client(self, identity: str) -> grpc.ChannelCredentials:
        """Credentials with a certificate whose SAN URI is `msgbus://identity`."""
        issued = self.ca.issue_client(identity.replace("/", "-"), uris=[f"msgbus://{identity}"])
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem,
            private_key=issued.key_pem,
            certificate_chain=issued.cert_pem,
        )


def _node(node: NodeId) -> pb.NodeId:
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def every_rpc(
    channel: grpc.Channel,
    *,
    topic: str,
    queue: str,
    front_id: str,
    node: NodeId,
    metadata: Sequence[tuple[str, str]] = (),
) -> Outcome:
    """Make every RPC once; `front_id` is the id at the front of `queue` now."""
    stub = rpc.MsgbusServiceStub(channel)
    meta = tuple(metadata)
    outcome = Outcome()
    entry = pb.PublishRequest(topic=topic, payload=b"batch")
    calls: dict[str, Callable[[], object]] = {
        "Health": lambda: stub.Health(pb.HealthRequest(), timeout=CALL_TIMEOUT_S, metadata=meta),
        "Ready": lambda: stub.Ready(pb.ReadyRequest(), timeout=CALL_TIMEOUT_S, metadata=meta),
        "Publish": lambda: stub.Publish(
            pb.PublishRequest(topic=topic, payload=b"one"), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "PublishBatch": lambda: stub.PublishBatch(
            pb.PublishBatchRequest(entries=[entry, entry]), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "Fetch": lambda: list(
            stub.Fetch(
                pb.FetchRequest(topic=topic, origin=_node(node), from_head_id=1),
                timeout=CALL_TIMEOUT_S,
                metadata=meta,
            )
        ),
        "Subscribe": lambda: first_response(
            stub.Subscribe(
                pb.SubscribeRequest(topic=topic, from_head_id=1),
                timeout=CALL_TIMEOUT_S,
                metadata=meta,
            )
        ),
        "GetHead": lambda: stub.GetHead(
            pb.GetHeadRequest(topic=topic), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        # A cursor at head 1: Publish came first.
        "CommitCursor": lambda: stub.CommitCursor(
            pb.CommitCursorRequest(name="matrix", topic=topic, head_id=1),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "GetCursor": lambda: stub.GetCursor(
            pb.GetCursorRequest(name="matrix", topic=topic), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "ListCursors": lambda: outcome.cursors.extend(
            cursor.name
            for cursor in stub.ListCursors(
                pb.ListCursorsRequest(), timeout=CALL_TIMEOUT_S, metadata=meta
            ).cursors
        ),
        "DeleteCursor": lambda: stub.DeleteCursor(
            pb.DeleteCursorRequest(name="matrix", topic=topic),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "ListHeads": lambda: outcome.listed.extend(
            head.topic
            for head in stub.ListHeads(
                pb.ListHeadsRequest(), timeout=CALL_TIMEOUT_S, metadata=meta
            ).heads
        ),
        "ListPeerSyncStates": lambda: stub.ListPeerSyncStates(
            pb.ListPeerSyncStatesRequest(), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "DeleteRange": lambda: stub.DeleteRange(
            pb.DeleteRangeRequest(topic=topic, from_head_id=1, to_head_id=1),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "EnqueueFifo": lambda: stub.EnqueueFifo(
            pb.EnqueueFifoRequest(queue=queue, topic=topic, target=_node(node), payload=b"job"),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "PeekFifo": lambda: stub.PeekFifo(
            pb.PeekFifoRequest(queue=queue), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "RejectFifo": lambda: stub.RejectFifo(
            pb.RejectFifoRequest(queue=queue, message_id=front_id),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "AckFifo": lambda: stub.AckFifo(
            pb.AckFifoRequest(queue=queue, message_id=front_id),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        # A lease that holds for a second: it changes nothing another call of the matrix sees
        # for long. The lease RPCs by id answer accepted=false for an unknown lease (OK).
        "LeaseFifo": lambda: stub.LeaseFifo(
            pb.LeaseFifoRequest(queue=queue, visibility_ms=1_000),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "ExtendFifoLease": lambda: stub.ExtendFifoLease(
            pb.ExtendFifoLeaseRequest(queue=queue, lease_id="1.matrix"),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "RejectFifoLease": lambda: stub.RejectFifoLease(
            pb.RejectFifoLeaseRequest(queue=queue, lease_id="1.matrix"),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "AckFifoLease": lambda: stub.AckFifoLease(
            pb.AckFifoLeaseRequest(queue=queue, lease_id="1.matrix"),
            timeout=CALL_TIMEOUT_S,
            metadata=meta,
        ),
        "ListFifo": lambda: stub.ListFifo(
            pb.ListFifoRequest(queue=queue), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
        "RedriveFifo": lambda: stub.RedriveFifo(
            pb.RedriveFifoRequest(queue=queue), timeout=CALL_TIMEOUT_S, metadata=meta
        ),
    }
    assert tuple(calls) == RPCS
    for name, call in calls.items():
        try:
            call()
        except grpc.RpcError as error:
            outcome.codes[name] = error.code().name
            outcome.details[name] = error.details() or ""
        else:
            outcome.codes[name] = "OK"
    return outcome


def first_response(stream: grpc.CallIterator[T]) -> T:
    """The first response of a live stream, which is then cancelled."""
    try:
        for response in stream:
            return response
        raise AssertionError("the stream ended before its first response")
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel untyped


def store_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of a SQLite store file, read while the daemon serves it."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        # Some tables are WITHOUT ROWID: compare the rows as sets, in a stable order.
        return {
            table: sorted(connection.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
            for table in sorted(tables)
        }


def audit_lines(stderr: str) -> list[dict[str, object]]:
    """The audit lines in the stderr of a daemon started with --log-format json."""
    lines = []
    for raw in stderr.splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("audit"):
                lines.append(line)
    return lines


def main(argv: Sequence[str]) -> None:
    """Run `every_rpc` as another uid and gid; print the outcome as JSON."""
    target, uid, gid, topic, queue, front_id, node = argv
    # The channel (and what grpc imports for it) is made before the uid changes: the checkout
    # may be unreadable to that uid (a mode-0700 directory). It connects at its first call,
    # after the change, so SO_PEERCRED sees the new uid and gid.
    with grpc.insecure_channel(target) as channel:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
        outcome = every_rpc(
            channel, topic=topic, queue=queue, front_id=front_id, node=NodeId.from_key(node)
        )
    json.dump(
        {
            "codes": outcome.codes,
            "listed": outcome.listed,
            "details": outcome.details,
            "cursors": outcome.cursors,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
