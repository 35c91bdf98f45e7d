"""Write the wire fixtures that Python, Go and Rust must all read and write identically.

    uv run python tests/interop/make_fixtures.py          # (re)write tests/interop/fixtures
    uv run python tests/interop/make_fixtures.py --check  # exit 1 if the committed files differ

For every message type of msgbus.v1 there is `fixtures/wire/<Message>.bin`, the deterministic
encoding (map entries in key order) of an instance with every field set, and `<Message>.json`,
the same values in proto3 JSON. Values sit at the edges of their types: u64 and u32 maxima,
non-ASCII strings, bytes with NUL and 0xff, maps inserted out of key order.

`fixtures/markers/` holds delete-marker payloads in the original's compact JSON, listed with
their decoded values in `fixtures/markers.json`. One of them is the marker original redb nodes
write for "delete everything": to_head_id = u64::MAX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from msgbus_core import NodeId, TombstoneRange
from msgbus_proto import pb

FIXTURES = Path(__file__).resolve().parent / "fixtures"
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

_HEADERS = {"zeta": "last", "alpha": "first ✓", "": "empty key", "mid": ""}
"""Inserted out of key order on purpose: encoders must sort them to agree byte for byte."""


def _scalar(field: Any, index: int) -> object:
    # Any: upb's FieldDescriptor is not the pure-Python class the stubs name.
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{index}-é✓"
    if kind == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xff" + field.name.encode() + bytes([index])
    if kind == FieldDescriptor.TYPE_UINT64:
        return U64_MAX - index
    if kind == FieldDescriptor.TYPE_UINT32:
        return U32_MAX - index
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    raise AssertionError(f"no fixture value for {field.full_name} (type {kind})")


def populate(message: Message, index: int = 0) -> Message:
    """Set every field of `message` (two elements in repeated fields) and return it."""
    for field in message.DESCRIPTOR.fields:
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(_HEADERS)
        elif field.is_repeated:
            for element in (index, index + 1):
                if field.message_type is not None:
                    populate(target.add(), element)
                else:
                    target.append(_scalar(field, element))
        elif field.message_type is not None:
            populate(target, index)
        else:
            setattr(message, field.name, _scalar(field, index))
    return message


def has_map(descriptor: Descriptor) -> bool:
    """Whether a message holds a map, directly or in a nested message."""
    for field in descriptor.fields:
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry or has_map(field.message_type):
            return True
    return False


def wire_fixtures() -> dict[str, bytes]:
    """File name -> content for every message type of msgbus.v1, plus the index.

    `index.json` lists each type and whether it holds a map. Encoders may order map entries
    differently (upb, for one, writes the empty key last; Go and prost write it first), so for
    those types a re-encoding is compared as decoded values, and for all others byte for byte.
    """
    files: dict[str, bytes] = {}
    index = []
    for name, descriptor in sorted(pb.DESCRIPTOR.message_types_by_name.items()):
        message = populate(getattr(pb, name)())
        files[f"{name}.bin"] = message.SerializeToString(deterministic=True)
        document = json_format.MessageToDict(message)
        rendered = json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True)
        files[f"{name}.json"] = (rendered + "\n").encode()
        index.append({"message": name, "maps": has_map(descriptor)})
    files["index.json"] = (json.dumps(index, indent=2) + "\n").encode()
    return files


MARKERS = {
    "events-2-3.json": TombstoneRange(
        "events", NodeId("tenant", "default", "node-a"), 2, 3, 1_700_000_000_000
    ),
    "unicode-topic.json": TombstoneRange('é"\\<&>/✓', NodeId("t", "b", "d"), 0, 1, 0),
    "largest-stored-head.json": TombstoneRange(
        "events", NodeId("t", "b", "d"), 1, 2**63 - 1, 2**63 - 1
    ),
}
"""Markers this project writes; the original writes the same bytes."""

ORIGINAL_DELETE_EVERYTHING = (
    b'{"topic":"events","origin":{"tenant_id":"tenant","bl_name":"default","device_id":"redb-node"},'
    b'"from_head_id":1,"to_head_id":18446744073709551615,"created_at_ms":1700000000000}'
)
"""An original redb node's "delete everything" marker: to_head_id is u64::MAX."""


def marker_fixtures() -> dict[str, bytes]:
    """File name (under markers/) -> payload, plus the markers.json manifest."""
    files = {name: tombstone.to_marker_payload() for name, tombstone in MARKERS.items()}
    files["redb-delete-everything.json"] = ORIGINAL_DELETE_EVERYTHING
    manifest = [{"file": name, "marker": json.loads(files[name])} for name in sorted(files)]
    rendered = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    return {
        **{f"markers/{name}": data for name, data in files.items()},
        "markers.json": rendered.encode(),
    }


def expected_files() -> dict[str, bytes]:
    """Every fixture file, by path relative to the fixtures folder."""
    wire = {f"wire/{name}": data for name, data in wire_fixtures().items()}
    return {**wire, **marker_fixtures()}


def main(argv: list[str]) -> int:
    """Write the fixtures, or with --check report whether the committed ones are current."""
    files = expected_files()
    if "--check" in argv:
        stale = [
            name
            for name, data in files.items()
            if not (FIXTURES / name).is_file() or (FIXTURES / name).read_bytes() != data
        ]
        for name in stale:
            print(f"stale fixture: {name}")
        return 1 if stale else 0
    for name, data in files.items():
        path = FIXTURES / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} fixture files to {FIXTURES}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
