"""Ingest throughput: the landing worker against a raw consumer baseline, measured in the same run.

    python bench/ingest.py [--events 200000] [--partitions 3]

1. builds N realistic events (inference and feedback, built from ../shared/data, or the bundled corpus);
2. produces them to fresh topics on the embedded broker (or FLYWHEEL_KAFKA_BOOTSTRAP);
3. baseline: a plain confluent-kafka consumer reads the same topics and discards (events/s, MB/s);
4. the landing worker (`flywheel ingest`, in a subprocess) lands them: validated, in Delta, durable;
5. prints both rates, their ratio, the worker's peak RSS, and where the worker's time went.

Rates are counted from the first message received to the last message consumed (baseline) or the last commit
(worker), so the consumer-group join (seconds on the embedded broker) is excluded from both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.sample import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams.topics import ensure_topics

WORKER = """
import json, sys, time
from flywheel.config import Settings
from flywheel.streams.ingest import IngestWorker
st = IngestWorker(Settings.from_env()).run(until_idle=3)
print(json.dumps({"consumed": st.consumed, "bytes": st.consumed_bytes, "landed": st.landed,
                  "seconds": st.last_commit_at - st.first_event_at, "stages": st.seconds}))
"""


def produce(s: Settings, payloads: list[tuple[str, bytes]]) -> float:
    p = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                  "compression.type": "lz4", "enable.idempotence": True})
    t0 = time.perf_counter()
    for topic, value in payloads:
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0
    return time.perf_counter() - t0


def raw_consume(s: Settings, n: int) -> tuple[float, int]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"raw-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 50,
                  "session.timeout.ms": 6000})
    c.subscribe([s.inference_topic, s.feedback_topic])
    got, nbytes, first = 0, 0, None
    while got < n:
        msgs = c.consume(10_000, 0.5)
        if msgs and first is None:
            first = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                got += 1
                nbytes += len(m.value())
    elapsed = time.perf_counter() - (first or time.perf_counter())
    c.close()
    return elapsed, nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = Settings.from_env()
    s = base.replace(home=home, topic_prefix=f"bench{uuid.uuid4().hex[:6]}", partitions=args.partitions,
                     ingest_group=f"bench-{uuid.uuid4().hex[:6]}")
    started = False
    if s.uses_embedded_broker:
        s = s.replace(broker_port=broker.free_port())
        _, started = broker.start(s)
    try:
        ensure_topics(s)
        n_inf = int(args.events / 1.55)
        events = []
        for e in generate(load_corpus(), n_inf, seed=1, prefix="bench"):
            events.append(e)
            if len(events) >= args.events:
                break
        payloads = [(s.inference_topic if event_type_of(e).name == "inference" else s.feedback_topic,
                     json.dumps(e).encode()) for e in events]
        total_bytes = sum(len(v) for _, v in payloads)
        print(f"{len(payloads):,} events, {total_bytes / 1e6:.1f} MB, mean {total_bytes / len(payloads):.0f} B/event")
        t_prod = produce(s, payloads)
        print(f"produced with confluent-kafka in {t_prod:.2f}s ({len(payloads) / t_prod:,.0f} events/s)")

        t_raw, raw_bytes = raw_consume(s, len(payloads))
        raw_rate = len(payloads) / t_raw

        env = {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
               "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix,
               "FLYWHEEL_INGEST_GROUP": s.ingest_group}
        out = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        assert res["consumed"] == len(payloads), res
        lane_rate = res["consumed"] / res["seconds"]

        print(f"\n{'':24s}{'events/s':>12s}{'MB/s':>9s}")
        print(f"{'raw consumer (baseline)':24s}{raw_rate:12,.0f}{raw_bytes / t_raw / 1e6:9.1f}")
        print(f"{'landing worker':24s}{lane_rate:12,.0f}{res['bytes'] / res['seconds'] / 1e6:9.1f}")
        print(f"ratio lane/raw: {lane_rate / raw_rate:.2f}   (goal >= 0.25 and >= 100,000 events/s)")
        print(f"landed {res['landed']}; worker peak RSS {peak_rss_mb:,.0f} MB")
        busy = sum(res["stages"].values())
        print("worker time by stage: " + ", ".join(f"{k} {v:.2f}s ({v / busy:.0%})" for k, v in res["stages"].items()))
    finally:
        if started:
            broker.stop(s)


if __name__ == "__main__":
    main()
