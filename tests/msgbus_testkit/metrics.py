"""Scraping a daemon's `--metrics-listen` port: the Prometheus text, parsed by prometheus-client."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from msgbus_server.testing import free_port, wait_until

SCRAPE_TIMEOUT_S = 30.0


def metrics_args(port: int | None = None) -> tuple[list[str], int]:
    """`--metrics-listen 127.0.0.1:PORT` on a free port (or `port`), and that port."""
    chosen = port if port is not None else free_port()
    return ["--metrics-listen", f"127.0.0.1:{chosen}"], chosen


def fetch(port: int, path: str) -> bytes:
    """GET `path` from the listener on `port` (HTTP errors raise)."""
    url = f"http://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        body: bytes = response.read()
        return body


def status_json(port: int) -> dict[str, Any]:
    """`/status.json`, decoded."""
    decoded: dict[str, Any] = json.loads(fetch(port, "/status.json"))
    return decoded


@dataclass(frozen=True)
class Scrape:
    """One scrape of `/metrics`: every family by name, as the Prometheus parser reads them."""

    families: dict[str, Any]

    @classmethod
    def of(cls, port: int) -> Scrape:
        text = fetch(port, "/metrics").decode()
        return cls({family.name: family for family in text_string_to_metric_families(text)})

    def samples(self, name: str) -> list[Sample]:
        """Every sample whose name is `name` (a family's own, or its `_bucket`/`_count`/...)."""
        return [
            sample
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name
        ]

    def value(self, name: str, **labels: str) -> float:
        """The one sample of `name` with (at least) these labels; AssertionError if not one."""
        matching = [
            sample
            for sample in self.samples(name)
            if all(sample.labels.get(key) == value for key, value in labels.items())
        ]
        assert len(matching) == 1, f"{name}{labels}: {matching}"
        return float(matching[0].value)

    def maybe(self, name: str, **labels: str) -> float | None:
        """Like `value`, or None when there is no such sample."""
        matching = [
            sample
            for sample in self.samples(name)
            if all(sample.labels.get(key) == value for key, value in labels.items())
        ]
        return float(matching[0].value) if len(matching) == 1 else None

    def series(self, prefixes: Sequence[str] = ("msgbus_",)) -> list[Sample]:
        """Every sample of the families whose name starts with one of `prefixes`."""
        return [
            sample
            for name, family in self.families.items()
            if name.startswith(tuple(prefixes))
            for sample in family.samples
        ]


def scrape_until(port: int, condition: Callable[[Scrape], bool], *, message: str) -> Scrape:
    """Scrape until `condition` holds (the store survey is cached a few seconds); that scrape."""

    def attempt() -> Scrape | None:
        scrape = Scrape.of(port)
        return scrape if condition(scrape) else None

    return wait_until(attempt, message=message, retry_on=(OSError, AssertionError))
