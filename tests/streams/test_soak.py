"""A short soak (issue 14, item 5): 90 s at 5,000 events/s through Kafka and the collector into the lake, with
`flywheel ingest`, `flywheel collect` and `flywheel signals` running throughout (bench/soak.py runs 30 minutes).

What it holds: every event lands exactly once; no long-running process's memory keeps growing (the last third's
peak against the first third's); the latency from event to queryable stays bounded and does not climb."""

from __future__ import annotations

import pytest

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.testing.soak import PROCESSES, SoakPlan, run, statistics_line
from flywheel.streams.topics import ensure_topics


@pytest.mark.reliability
def test_a_steady_stream_lands_once_in_bounded_memory_at_a_steady_latency(kafka_settings: Settings) -> None:
    s = kafka_settings.replace(partitions=3)
    ensure_topics(s)
    report = run(s, SoakPlan(rate=5_000, seconds=90, collector_share=0.2, sample_s=2.0),
                 broker_pid=broker.status(s).pid)
    summary = "\n".join(report.lines()) + "\n" + statistics_line(report)
    print(summary)
    assert report.rate >= 0.8 * 5_000, f"the soak's producer fell behind, so it measured less than it says\n{summary}"
    assert report.sent_via_collector > 0.15 * report.sent, summary
    assert not report.undelivered, f"the broker did not acknowledge every event\n{summary}"
    assert report.landed == report.expected == report.distinct, summary
    assert all(code == 0 for code in report.exit_codes.values()), f"a process failed to stop cleanly\n{summary}"
    first, *_, last = report.windows(3)
    for name in PROCESSES:
        assert report.rss(name, *last) <= 1.3 * report.rss(name, *first), f"{name}'s memory kept growing\n{summary}"
    assert report.latency(0.99) < 15.0, summary
    assert report.latency(0.99, *last) <= 2 * report.latency(0.99, *first) + 2.0, f"latency climbed\n{summary}"
