"""Load: 500 live subscribers on 50 logs under publishers, a deliberately slow subscriber, and
thousands of subscribe/disconnect cycles, against a real daemon; memory read from /proc.

Bounded for the suite (2 shared cores): the fan-out runs its full 30 s at a modest publish rate
(every message reaches 10 subscribers), the slow reader reads one message per second for 12 s
while 3,200 messages of 64 KiB are published, and 3,000 subscribe/disconnect cycles run. The
full-length versions (100,000 messages under a reader of one message per second for a minute;
10,000 cycles; longer fan-outs) are `scripts/load_soak.py`.
"""

from __future__ import annotations

from pathlib import Path

from workloads.load import fanout, slow_subscriber, subscribe_cycles

from msgbus_server.testing import Daemon

PEAK_RSS_LIMIT_KIB = 300 * 1024
FLAT_RSS_KIB = 20 * 1024
SLOW_PAYLOAD_BYTES = 64 * 1024
SLOW_MESSAGES = 3_200
"""200 MiB of payloads published past the slow reader: a daemon that buffered them for it would
exceed FLAT_RSS_KIB ten times over (small payloads would hide such a buffer under the limit)."""
CYCLE_GROWTH_KIB = 10 * 1024


async def test_500_subscribers_on_50_logs_receive_everything_in_order(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        report = await fanout(daemon, subscribers=500, logs=50, seconds=30, rate=100)
        print(report)
        assert report.delivered == report.published * 10
        assert report.peak_rss_kib < PEAK_RSS_LIMIT_KIB, f"peak RSS {report.peak_rss_kib} KiB"
        assert daemon.poll() is None


async def test_a_slow_subscriber_costs_no_memory_and_is_never_cut_off(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        report = await slow_subscriber(
            daemon,
            messages=SLOW_MESSAGES,
            read_seconds=12,
            read_interval=1,
            payload_bytes=SLOW_PAYLOAD_BYTES,
        )
        print(
            f"published {report.published} x {SLOW_PAYLOAD_BYTES} B, read {report.read}, "
            f"RSS KiB {report.rss_kib}, growth {report.growth_kib} KiB"
        )
        assert report.published == SLOW_MESSAGES
        assert SLOW_MESSAGES * SLOW_PAYLOAD_BYTES > 5 * FLAT_RSS_KIB * 1024
        assert report.growth_kib < FLAT_RSS_KIB, report.rss_kib


async def test_subscribe_disconnect_cycles_do_not_grow_memory(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        report = await subscribe_cycles(daemon, cycles=3000, warmup=500)
        print(report)
        assert report.growth_kib < CYCLE_GROWTH_KIB, report
        assert daemon.poll() is None
