"""packaging/grafana/msgbus.json: a Grafana dashboard over exactly the metrics msgbusd exports.

Every query names only metrics that exist: those of `msgbus_server.metrics.CATALOGUE` (with the
sample suffixes of their type) and those the library's collectors in a daemon's registry serve.
There is a row per area of the catalogue, each with panels.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from msgbus_server.metrics import AREAS, CATALOGUE, DaemonMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "packaging" / "grafana" / "msgbus.json"
METRIC = re.compile(r"\b((?:msgbus|process|python)_[a-z0-9_]+)\b")
SUFFIXES = {
    "counter": ("",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count"),
}


def exported_sample_names() -> set[str]:
    names = {spec.name + suffix for spec in CATALOGUE for suffix in SUFFIXES[spec.kind]}
    # The library's process, platform and gc collectors, as a daemon registers them.
    for family in DaemonMetrics().registry.collect():
        names.update(sample.name for sample in family.samples)
    return names


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_query_names_only_exported_metrics() -> None:
    exported = exported_sample_names()
    queried: set[str] = set()
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            names = set(METRIC.findall(target["expr"]))
            assert names, f"{panel['title']}: {target['expr']} names no metric"
            assert names <= exported, f"{panel['title']}: unknown {sorted(names - exported)}"
            queried |= names
    assert "process_cpu_seconds_total" in queried


def test_there_is_a_row_per_area_each_with_panels() -> None:
    panels = dashboard()["panels"]
    rows = [panel["title"].lower() for panel in panels if panel["type"] == "row"]
    assert rows == list(AREAS)
    counts: dict[str, int] = {}
    current = ""
    for panel in panels:
        if panel["type"] == "row":
            current = panel["title"].lower()
        else:
            counts[current] = counts.get(current, 0) + 1
    assert all(counts.get(area, 0) >= 2 for area in AREAS), counts


def test_the_dashboard_is_importable_json() -> None:
    board = dashboard()
    assert board["title"] == "msgbus"
    assert board["uid"]
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    for panel in board["panels"]:
        position = panel["gridPos"]
        assert position["x"] >= 0, panel["title"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
