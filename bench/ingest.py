"""Ingest throughput: the landing worker against a raw consumer baseline, measured in the same run.

    python bench/ingest.py [--events 200000] [--partitions 4] [--workers 1,2] [--repeat 3]

1. builds N realistic events (inference and feedback, built from ../shared/data, or the bundled corpus), and the
   same N events carrying a realistic `metadata` object each (as SDKs attach them: ids, sampling parameters,
   retrieval context, some non-ASCII text);
2. times the batch validator alone on 20k inferences of each kind (the fast path's share of the worker's work);
3. produces both sets to fresh topics of their own on the embedded broker (or FLYWHEEL_KAFKA_BOOTSTRAP);
4. baseline: a plain confluent-kafka consumer reads the topics without metadata and discards (events/s, MB/s);
5. the landing worker (`flywheel ingest`, in subprocesses: 1, then 2 in one group, ...) lands each set: validated,
   in Delta, durable, each configuration into a lake of its own;
6. repeats 4 and 5 (`--repeat`, 3 rounds by default: this machine is shared and one round varies by about 10%),
   then prints the median rates, the median of each round's ratios (to the raw rate; with metadata to without),
   the ranges, the worker's peak RSS, and where the worker's time went.

Rates are counted from the first message received to the last message consumed (baseline) or the last commit
(worker), so the consumer-group join (seconds on the embedded broker) is excluded from both.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.testing.corpus import default_shared_data, generate, load_corpus
from flywheel.schemas.contract import INFERENCE, event_type_of
from flywheel.schemas.validation import BatchValidator
from flywheel.streams.topics import ensure_topics

WORKER = """
import json, sys, time
from flywheel.config import Settings
from flywheel.streams.ingest import IngestWorker
st = IngestWorker(Settings.from_env()).run(until_idle=3)
# VmHWM, not ru_maxrss: the latter also counts the bench process this one was forked from (its 1M payloads).
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"consumed": st.consumed, "bytes": st.consumed_bytes, "landed": st.landed,
                  "first": st.first_event_at, "last": st.last_commit_at, "stages": st.seconds,
                  "peak_rss_mb": hwm_kb / 1024}))
"""


def run_workers(s: Settings, n: int) -> dict:
    """Land the topics with `n` worker processes in one group; wall time from the first event any of them got to
    the last commit any of them made (CLOCK_MONOTONIC is shared by the processes of one machine)."""
    env = {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix,
           "FLYWHEEL_INGEST_GROUP": s.ingest_group}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    active = [r for r in results if r["first"] is not None]
    stages = {k: sum(r["stages"][k] for r in results) for k in results[0]["stages"]}
    return {"consumed": sum(r["consumed"] for r in results), "bytes": sum(r["bytes"] for r in results),
            "landed": {k: sum(r["landed"][k] for r in results) for k in results[0]["landed"]},
            "seconds": max(r["last"] for r in active) - min(r["first"] for r in active), "stages": stages,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


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


def validator_seconds(payloads: list[bytes], rounds: int = 5) -> float:
    """Median seconds the batch validator takes over `payloads` (inferences, all valid: the fast path's case)."""
    v = BatchValidator(INFERENCE, 1 << 20)
    times = []
    for _ in range(rounds):
        v.rows_fast = 0
        t0 = time.perf_counter()
        v.validate(payloads)
        times.append(time.perf_counter() - t0)
        assert v.rows_fast == len(payloads), "valid events left the fast path"
    return statistics.median(times)


def build(n_events: int, metadata: bool) -> list[dict]:
    events = []
    for e in generate(load_corpus(default_shared_data()), int(n_events / 1.55), seed=1, prefix="bench", metadata=metadata):
        events.append(e)
        if len(events) >= n_events:
            break
    return events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", default="1", help="worker-process counts to measure, comma-separated (on 2 "
                    "cores, 2 processes measured slower than 1)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of baseline-then-workers; medians are reported "
                    "(on a shared machine one round varies by about 10%%)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:6]
    s = base.replace(home=home, topic_prefix=f"bench{tag}", partitions=args.partitions, ingest_group=f"bench-{tag}")
    started = False
    if s.uses_embedded_broker:
        s = s.replace(broker_port=broker.free_port())
        _, started = broker.start(s)
    # Two lanes, the same events without and with `metadata`, on topics of their own.
    lanes = {"": s, "metadata": s.replace(topic_prefix=f"bench{tag}meta", ingest_group=f"bench-{tag}-meta")}
    try:
        n_events = 0
        for lane, ls in lanes.items():
            ensure_topics(ls)
            payloads = [(ls.inference_topic if event_type_of(e).name == "inference" else ls.feedback_topic,
                         json.dumps(e).encode()) for e in build(args.events, metadata=bool(lane))]
            n_events = len(payloads)
            total_bytes = sum(len(v) for _, v in payloads)
            print(f"{lane or 'no metadata'}: {n_events:,} events, {total_bytes / 1e6:.1f} MB, "
                  f"mean {total_bytes / n_events:.0f} B/event")
            inferences = [v for topic, v in payloads if topic == ls.inference_topic][:20_000]
            t_val = validator_seconds(inferences)
            print(f"    batch validator alone: {len(inferences):,} inferences in {t_val * 1e3:.0f} ms "
                  f"({len(inferences) / t_val:,.0f} events/s)")
            t_prod = produce(ls, payloads)
            print(f"    produced with confluent-kafka in {t_prod:.2f}s ({n_events / t_prod:,.0f} events/s)")
            del payloads, inferences
        # The events built above are millions of objects the cyclic collector would walk again and again while
        # the baseline creates messages: that made the baseline run at ~100k or ~480k events/s depending on when
        # full collections fell. Freeze them out of its way; the workers run in processes of their own.
        gc.collect()
        gc.freeze()

        counts = [int(x) for x in args.workers.split(",")]
        raw: list[tuple[float, int]] = []
        landed: dict[tuple[int, str], list[dict]] = {(n, lane): [] for n in counts for lane in lanes}
        for r in range(args.repeat):
            # Each round measures the baseline and then every worker count on each lane, so a ratio compares
            # neighbours in time.
            raw.append(raw_consume(s, n_events))
            for n in counts:
                for lane, ls in lanes.items():
                    sn = ls.replace(home=home / f"workers-{n}-{lane}-{r}", ingest_group=f"{ls.ingest_group}-{n}-{r}")
                    res = run_workers(sn, n)
                    assert res["consumed"] == n_events, res
                    landed[n, lane].append(res)
            print(f"round {r + 1}/{args.repeat}: raw {n_events / raw[-1][0]:,.0f} events/s; " + ", ".join(
                f"{n} worker{'s' if n > 1 else ''}{' with ' + lane if lane else ''} "
                f"{n_events / landed[n, lane][-1]['seconds']:,.0f}" for n in counts for lane in lanes))

        raw_rates = [n_events / t for t, _ in raw]
        raw_rate = statistics.median(raw_rates)
        raw_mbs = statistics.median(b / t / 1e6 for t, b in raw)
        print(f"\nmedians of {args.repeat} round{'s' if args.repeat > 1 else ''} (range in brackets)")
        print(f"{'':30s}{'events/s':>12s}{'MB/s':>9s}{'vs raw':>8s}{'peak RSS':>10s}")
        print(f"{'raw consumer (baseline)':30s}{raw_rate:12,.0f}{raw_mbs:9.1f}{1:8.2f}{'':10s}"
              f"  [{min(raw_rates):,.0f}-{max(raw_rates):,.0f}]")
        for n in counts:
            lane_rates = {}
            for lane in lanes:
                runs = landed[n, lane]
                rates = lane_rates[lane] = [res["consumed"] / res["seconds"] for res in runs]
                ratios = [rate / rr for rate, rr in zip(rates, raw_rates)]  # each against its own round's baseline
                rate = statistics.median(rates)
                peak_rss_mb = max(res["peak_rss_mb"] for res in runs)  # the worker's own, not other children's
                mbs = statistics.median(res["bytes"] / res["seconds"] / 1e6 for res in runs)
                label = f"landing, {n} worker{'s' if n > 1 else ''}{', ' + lane if lane else ''}"
                print(f"{label:30s}{rate:12,.0f}{mbs:9.1f}{statistics.median(ratios):8.2f}{peak_rss_mb:8,.0f}MB"
                      f"  [{min(rates):,.0f}-{max(rates):,.0f}; {min(ratios):.2f}-{max(ratios):.2f}]")
                res = runs[rates.index(statistics.median_low(rates))]
                busy = sum(v for k, v in res["stages"].items() if k != "idle")
                print("    time by stage in the median round (they overlap: the worker is a pipeline): " + ", ".join(
                    f"{k} {v:.1f}s ({v / busy:.0%})" for k, v in res["stages"].items() if k != "idle")
                      + f"; landed {res['landed']}")
            meta = [m / p for m, p in zip(lane_rates["metadata"], lane_rates[""])]  # each round's neighbours
            print(f"    with metadata / without, {n} worker{'s' if n > 1 else ''}: {statistics.median(meta):.2f}"
                  f"  [{min(meta):.2f}-{max(meta):.2f}]")
        print("goal: a lane at >= 0.25 of the raw rate and >= 100,000 events/s, and with metadata >= 0.9 of without; "
              "peak RSS is the largest worker's")
    finally:
        if started:
            broker.stop(s)
        shutil.rmtree(home, ignore_errors=True)  # a lake per round and worker count: GBs, of no use afterwards


if __name__ == "__main__":
    main()
