"""`flywheel demo`: the whole lane on the embedded defaults, end to end, in about half a minute.

Starts the embedded broker (unless one answers), sends the bundled events (real public feedback data, see
README.md here) plus one event from the SDK and a few hostile ones, lands them, and queries the views. Re-running
it is safe: `inferences` and `feedback` show every event once however often it was sent (`quarantine` keeps one
row per rejected message, so each run adds its hostile ones again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.send import send_file
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.query import connect

EVENTS = Path(__file__).parent / "events.jsonl"

HOSTILE = [
    b'{"inference_id": "demo-bad-1", "timestamp": "2026-11-01T00:00:00Z", "app": "x", "model"',  # truncated
    json.dumps({"inference_id": "demo-bad-2", "timestamp": "yesterday", "app": "x", "model": "m", "input": "q",
                "output": "a", "latency_ms": -5}).encode(),
    b"\xff\xfe not utf-8",
]

QUERIES = [
    ("events per view",
     "SELECT 'inferences' AS view, count(*) AS rows FROM inferences UNION ALL "
     "SELECT 'feedback', count(*) FROM feedback UNION ALL SELECT 'quarantine', count(*) FROM quarantine"),
    ("feedback per model (interactions)",
     "SELECT model, count(*) AS inferences, sum(thumbs_up)::BIGINT AS up, sum(thumbs_down)::BIGINT AS down, "
     "round(avg(rating_mean), 2) AS rating, sum(corrections)::BIGINT AS corrections, sum(flags)::BIGINT AS flags "
     "FROM interactions GROUP BY model ORDER BY inferences DESC LIMIT 8"),
    ("why events were quarantined", "SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY n DESC"),
]


def run(settings: Settings, echo: Callable[[str], None] = print) -> None:
    started = False
    if settings.uses_embedded_broker:
        st, started = broker.start(settings)
        echo(f"{'started' if started else 'using'} the embedded broker on {st.address}")
    try:
        ensure_topics(settings)
        with FlywheelClient(settings) as client:
            report = send_file(client, EVENTS)
            iid = client.log_inference(inference_id="demo-sdk-1", app="demo", model="gpt-4o-mini",
                                       input=[{"role": "user", "content": "What is a data flywheel?"}],
                                       output="A loop where product usage produces data that improves the product.",
                                       latency_ms=812.5, input_tokens=9, output_tokens=14)
            client.log_feedback(feedback_id="demo-sdk-fb-1", inference_id=iid, kind="rating", value=5)
            for payload in HOSTILE:
                client.send_raw(settings.inference_topic, payload)
            client.flush()
        echo(f"sent {report.total + 2} events and {len(HOSTILE)} hostile ones to {settings.kafka_bootstrap}")
        stats = IngestWorker(settings).run(until_idle=2.0)
        echo(f"landed {stats.landed['inferences']} inferences, {stats.landed['feedback']} feedback, "
             f"quarantined {stats.quarantined} into {settings.lake}")
        con = connect(settings)
        for title, sql in QUERIES:
            echo(f"\n-- {title}\n{con.sql(sql)}")
        echo("Query it yourself: flywheel sql \"SELECT * FROM interactions LIMIT 5\"")
    finally:
        if started:
            broker.stop(settings)
            echo("stopped the embedded broker (the lake keeps the data)")
