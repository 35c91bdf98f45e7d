"""The README's Observability section stays true (issue 21).

Its metric table is generated from `msgbus_server.metrics.CATALOGUE`, the list every scrape is held
to (tests/server/test_metrics.py), so the README lists exactly what msgbusd exports. It shows the
status page's screenshot and a `msgbus top` capture, both made by the tests of those features
(tests/sync/test_status_page.py and packages/msgbus-sdk/tests/test_top.py, with
MSGBUS_DOCS_IMAGES=1). With MSGBUS_UPDATE_README=1 this test writes the table and the capture
into the README (between their markers) instead of only comparing them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from msgbus_server.metrics import AREAS, CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SCREENSHOT = ROOT / "docs" / "images" / "status-page.png"
TOP_CAPTURE = ROOT / "docs" / "images" / "msgbus-top.txt"
TABLE = ("<!-- metrics table: begin -->", "<!-- metrics table: end -->")
CAPTURE = ("<!-- msgbus top capture: begin -->", "<!-- msgbus top capture: end -->")
AREA_TITLES = {
    "publishing": "Publishing",
    "storage": "Storage",
    "subscribers": "Subscribers and readers",
    "sync": "Sync, per peer",
    "fifo": "FIFO queues",
    "process": "Process",
}


def metrics_table() -> str:
    """The README's metric tables, one per area, from the catalogue."""
    parts = []
    for area in AREAS:
        parts.append(f"**{AREA_TITLES[area]}**\n")
        parts.append("| metric | type | labels | meaning |")
        parts.append("|---|---|---|---|")
        for spec in CATALOGUE:
            if spec.area == area:
                labels = ", ".join(f"`{label}`" for label in spec.labels)
                parts.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def top_capture() -> str:
    return "```text\n" + TOP_CAPTURE.read_text().rstrip() + "\n```\n"


def between(text: str, markers: tuple[str, str]) -> str:
    begin, end = markers
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, re.DOTALL)
    assert match, f"the README has no {begin} ... {end} block"
    return match.group(1)


def replaced(text: str, markers: tuple[str, str], content: str) -> str:
    old = between(text, markers)
    return text.replace(f"{markers[0]}\n{old}{markers[1]}", f"{markers[0]}\n{content}{markers[1]}")


def test_the_readme_lists_every_exported_metric() -> None:
    text = README.read_text(encoding="utf-8")
    if os.environ.get("MSGBUS_UPDATE_README") == "1":
        text = replaced(text, TABLE, metrics_table())
        README.write_text(text, encoding="utf-8")
    assert between(text, TABLE) == metrics_table()
    for spec in CATALOGUE:
        assert f"`{spec.name}`" in text


def test_the_readme_shows_the_status_page_and_msgbus_top() -> None:
    text = README.read_text(encoding="utf-8")
    if os.environ.get("MSGBUS_UPDATE_README") == "1":
        text = replaced(text, CAPTURE, top_capture())
        README.write_text(text, encoding="utf-8")
    assert "](docs/images/status-page.png)" in text
    assert SCREENSHOT.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert between(text, CAPTURE) == top_capture()
    capture = TOP_CAPTURE.read_text()
    assert "Busiest logs" in capture
    assert "Peers" in capture
