"""The status page in a real headless Chromium (issue 21), with two daemons syncing.

The leader pulls from its follower as the follower pulls from it, so the follower's listings
tell the leader how far behind it is. The follower is stopped, the leader publishes: the page
shows the follower with its lag and its error. The follower is started again and catches up:
the same page, never reloaded, shows lag 0. Screenshots go to the test's folder, and with
MSGBUS_DOCS_IMAGES=1 the first one also to docs/images/status-page.png (the README's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from msgbus_proto import pb
from msgbus_server.testing import free_port, wait_until
from msgbus_testkit.browser import chromium_path
from msgbus_testkit.metrics import metrics_args, status_json
from msgbus_testkit.peers import start_node

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "status-page.png"
TARGET = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="worker")


def unsynced(port: int, peer: str) -> int | None:
    for status in status_json(port)["peers"]:
        if status["endpoint"] == peer:
            value: int | None = status["unsynced_messages"]
            return value
    return None


def test_the_page_shows_a_lagging_follower_and_then_lag_0_without_a_reload(
    tmp_path: Path,
) -> None:
    chromium = chromium_path()
    args, port = metrics_args()
    follower_port = free_port()
    follower_endpoint = f"127.0.0.1:{follower_port}"
    with (
        start_node(
            tmp_path,
            "leader",
            peers=[(follower_endpoint, "tenant/default/follower")],
            extra=args,
        ) as leader,
        start_node(
            tmp_path,
            "follower",
            peers=[(leader.endpoint, "tenant/default/leader")],
            port=follower_port,
        ) as follower,
    ):
        stub = leader.stub()
        for topic, count, size in (("orders.eu", 40, 300), ("telemetry.cpu", 12, 80)):
            for _ in range(count):
                stub.Publish(pb.PublishRequest(topic=topic, payload=b"x" * size))
        for name in ("a", "b", "c"):
            stub.EnqueueFifo(
                pb.EnqueueFifoRequest(
                    queue="jobs", topic="work", payload=name.encode(), target=TARGET
                )
            )
        wait_until(
            lambda: unsynced(port, follower_endpoint) == 0,
            message="the follower holds everything, as the leader sees it",
        )
        follower.kill()
        for _ in range(5):
            stub.Publish(pb.PublishRequest(topic="orders.eu", payload=b"y" * 300))

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"http://127.0.0.1:{port}/status")
                row = page.locator(f'tr[data-peer="{follower_endpoint}"]')
                expect(row.locator('[data-field="unsynced"]')).to_have_text("5", timeout=30_000)
                expect(row).to_contain_text("failing")
                expect(row).to_contain_text(follower_endpoint)
                expect(page.locator("#logs")).to_contain_text("orders.eu")
                expect(page.locator("#queues")).to_contain_text("jobs")
                expect(page.locator("#state")).to_have_text("SERVING")
                page.screenshot(path=str(tmp_path / "status-lagging.png"), full_page=True)
                if os.environ.get("MSGBUS_DOCS_IMAGES") == "1":
                    DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(tmp_path / "status-lagging.png", DOCS_IMAGE)
                # A reload would start a new document and lose this mark.
                page.evaluate("window.msgbusNotReloaded = true")

                follower.restart()
                expect(row.locator('[data-field="unsynced"]')).to_have_text("0", timeout=60_000)
                expect(row.locator('[data-field="lag"]')).to_have_text("0")
                expect(row).to_contain_text("in sync")
                assert page.evaluate("window.msgbusNotReloaded") is True
                page.screenshot(path=str(tmp_path / "status-caught-up.png"), full_page=True)
            finally:
                browser.close()
