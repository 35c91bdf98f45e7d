"""The committed wire fixtures: Python (official protobuf and betterproto2), Go and Rust agree.

Each language decodes every golden message to the values of its proto3 JSON twin and encodes
those values back to the golden bytes (messages with maps: to the same decoded values, since
encoders may order map entries differently). Each decodes every delete-marker payload to the
values in markers.json, and encodes it back byte for byte.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import betterproto2
import pytest
from google.protobuf import json_format

from msgbus_core import NodeId, TombstoneRange
from msgbus_core.limits import MAX_STORED_INT
from msgbus_proto import pb
from msgbus_sdk._generated.msgbus import v1 as bp

if TYPE_CHECKING:
    from conftest import Scenarios

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WIRE = FIXTURES / "wire"
INDEX: list[dict[str, Any]] = json.loads((WIRE / "index.json").read_text())
MARKERS: list[dict[str, Any]] = json.loads((FIXTURES / "markers.json").read_text())

pytestmark = pytest.mark.timeout(2100)  # the Go and Rust checks may wait for the first build


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", FIXTURES.parent / "make_fixtures.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_fixtures_are_what_the_generator_writes() -> None:
    expected: dict[str, bytes] = _generator().expected_files()
    on_disk = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.is_file()}
    assert on_disk == set(expected)
    for name, data in expected.items():
        assert (FIXTURES / name).read_bytes() == data, f"{name} is stale: run make_fixtures.py"


def test_every_message_type_of_the_contract_has_a_fixture() -> None:
    assert [case["message"] for case in INDEX] == sorted(pb.DESCRIPTOR.message_types_by_name)


@pytest.mark.parametrize("case", INDEX, ids=[case["message"] for case in INDEX])
def test_official_protobuf_decodes_and_encodes_every_fixture(case: dict[str, Any]) -> None:
    name = case["message"]
    golden = (WIRE / f"{name}.bin").read_bytes()
    kind = getattr(pb, name)
    decoded = kind.FromString(golden)
    expected = json_format.Parse((WIRE / f"{name}.json").read_text(), kind())
    assert decoded == expected
    assert expected.SerializeToString(deterministic=True) == golden


@pytest.mark.parametrize("case", INDEX, ids=[case["message"] for case in INDEX])
def test_betterproto2_decodes_and_encodes_every_fixture(case: dict[str, Any]) -> None:
    name = case["message"]
    golden = (WIRE / f"{name}.bin").read_bytes()
    kind: type[betterproto2.Message] = getattr(bp, name)
    decoded = kind.parse(golden)
    expected = kind.from_json((WIRE / f"{name}.json").read_text())
    assert decoded == expected
    encoded = bytes(expected)
    official = getattr(pb, name)
    if case["maps"]:
        assert official.FromString(encoded) == official.FromString(golden)
    else:
        assert encoded == golden


@pytest.mark.parametrize("case", MARKERS, ids=[case["file"] for case in MARKERS])
def test_python_reads_and_writes_every_delete_marker_fixture(case: dict[str, Any]) -> None:
    payload = (FIXTURES / "markers" / case["file"]).read_bytes()
    marker = case["marker"]
    tombstone = TombstoneRange.from_marker_payload(payload)
    assert tombstone.topic == marker["topic"]
    assert tombstone.origin == NodeId(**marker["origin"])
    assert tombstone.from_head_id == marker["from_head_id"]
    assert tombstone.created_at_ms == marker["created_at_ms"]
    # u64::MAX ("delete everything", as original redb nodes write it) is clamped to the
    # highest head a store can hold, which covers the same messages.
    assert tombstone.to_head_id == min(marker["to_head_id"], MAX_STORED_INT)
    if marker["to_head_id"] <= MAX_STORED_INT:
        assert tombstone.to_marker_payload() == payload


def test_go_reads_and_writes_the_fixtures(go_client: Path, scenarios: Scenarios) -> None:
    output = scenarios.run(go_client, "fixtures", "-dir", str(FIXTURES))
    assert f"{len(INDEX)} message types decode" in output


def test_rust_reads_and_writes_the_fixtures(rust_client: Path, scenarios: Scenarios) -> None:
    output = scenarios.run(rust_client, "fixtures", "-dir", str(FIXTURES))
    assert f"{len(INDEX)} message types decode" in output
