"""Ingest throughput: the landing worker against a raw consumer baseline, measured in the same run.

    python bench/ingest.py [--events 200000] [--partitions 4] [--repeat 3]
    python bench/ingest.py --workers 3 [--partitions 6]     # how throughput scales with worker processes

1. builds N realistic events (inference and feedback, built from ../shared/data, or the bundled corpus), and the
   same N events carrying a realistic `metadata` object each (as SDKs attach them: ids, sampling parameters,
   retrieval context, some non-ASCII text); with `--control`, also the same N events carrying the same bytes as
   plain text instead (each metadata object's text, quotes made apostrophes, appended to the inference's `output`
   or as the feedback's `comment`): what the extra bytes cost by themselves, object or not;
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

With `--workers N` (N > 1, or a list such as `1,2,4`) it measures scale-out instead: for 1, 2, ... N worker
processes in one group on topics of `--partitions` (6 by default) partitions, each count on fresh topics and a lake
of its own, the events are produced first, then the workers start with their partitions paused, and land only
once the group is stable (every worker assigned its share: on the embedded broker each join is a rebalance of
seconds, which would otherwise be timed as one worker landing alone). It prints events/s per count, the ratio
to 1 worker in the same round, events per CPU-second of the workers (the figure that carries over to machines
with more cores), and the load average.
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
import re
import signal
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.testing.corpus import default_shared_data, generate, load_corpus
from flywheel.schemas.contract import INFERENCE, event_type_of
from flywheel.schemas.validation import BatchValidator
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.lake import Lake

WORKER = """
import json, logging, os, sys, threading, time
from flywheel.config import Settings
from flywheel.streams.ingest import IngestWorker
# Its assignments go to stderr: the scale-out measure waits for every worker to have its share.
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
idle = float(sys.argv[1]) if sys.argv[1] != "-" else None
gate = sys.argv[2] if len(sys.argv) > 2 else None

class Gated(IngestWorker):
    # Holds what it is assigned paused until the gate file exists: the scale-out measure opens it once the
    # group is stable, so no worker lands the backlog alone while the others are still joining.
    def _on_assign(self, consumer, partitions):
        super()._on_assign(consumer, partitions)
        if not os.path.exists(gate):
            consumer.pause(partitions)

def open_gate(worker):
    while not os.path.exists(gate):
        time.sleep(0.01)
    for _ in range(5):  # librdkafka's calls are thread-safe; again in case an assignment paused just after
        consumer = worker._consumer
        if consumer is not None:
            consumer.resume(consumer.assignment())
        time.sleep(0.2)

worker = (Gated if gate else IngestWorker)(Settings.from_env())
if gate:
    threading.Thread(target=open_gate, args=(worker,), daemon=True).start()
before = os.times()  # imports and set-up done: what the worker spends from here on is the landing's
st = worker.run(until_idle=idle, install_signal_handlers=True)
cpu = os.times()
# VmHWM, not ru_maxrss: the latter also counts the bench process this one was forked from (its 1M payloads).
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"consumed": st.consumed, "bytes": st.consumed_bytes, "landed": st.landed,
                  "first": st.first_event_at, "last": st.last_commit_at, "stages": st.seconds,
                  "peak_rss_mb": hwm_kb / 1024, "cpu_s": cpu.user + cpu.system,
                  "run_cpu_s": cpu.user + cpu.system - before.user - before.system}))
"""
ASSIGNED = re.compile(r"assigned \[(.*?)\], resuming at")


def run_workers(s: Settings, n: int) -> dict:
    """Land the topics with `n` worker processes in one group; wall time from the first event any of them got to
    the last commit any of them made (CLOCK_MONOTONIC is shared by the processes of one machine)."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, "3"], env=_worker_env(s), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    return _summarize([_result(p) for p in procs])


def _worker_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix,
            "FLYWHEEL_INGEST_GROUP": s.ingest_group, "FLYWHEEL_PARTITIONS": str(s.partitions),
            "FLYWHEEL_KAFKA_SESSION_TIMEOUT_MS": "6000"}


def _result(p: subprocess.Popen[str]) -> dict:
    out, _ = p.communicate()
    assert p.returncode == 0, f"worker exited with {p.returncode}"
    return json.loads(out.strip().splitlines()[-1])


def _summarize(results: list[dict]) -> dict:
    active = [r for r in results if r["first"] is not None]
    stages = {k: sum(r["stages"][k] for r in results) for k in results[0]["stages"]}
    return {"consumed": sum(r["consumed"] for r in results), "bytes": sum(r["bytes"] for r in results),
            "landed": {k: sum(r["landed"][k] for r in results) for k in results[0]["landed"]},
            "seconds": max(r["last"] for r in active) - min(r["first"] for r in active), "stages": stages,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "cpu_s": sum(r["cpu_s"] for r in results),
            "run_cpu_s": sum(r["run_cpu_s"] for r in results),
            "per_worker": [r["consumed"] for r in results]}


def run_gated(s: Settings, n: int, payloads: list[tuple[str, bytes]], logs: Path) -> dict:
    """Produce `payloads` to the topics of `s`, start `n` workers in one group with their partitions paused, open
    the gate once each holds its share, and stop the workers (SIGTERM: they land what they hold) once the lake
    holds every event. The rate is the workers' own: first event any got to the last commit any made."""
    ensure_topics(s)
    produce(s, payloads)
    env = _worker_env(s)
    names = [logs / f"{s.ingest_group}-{i}.log" for i in range(n)]
    gate = logs / f"{s.ingest_group}.go"
    procs = []
    for name in names:
        with open(name, "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, "-", str(gate)], env=env,
                                          stdout=subprocess.PIPE, stderr=err, text=True))
    try:
        total = 2 * s.partitions
        t0 = time.monotonic()
        while True:  # stable: every worker's latest assignment is its share, together every partition once
            latest = [_assignments(name) for name in names]
            shares = [a[-1] if a else set() for a in latest]
            if all(len(a) in (total // n, -(-total // n)) for a in shares) and len(set().union(*shares)) == total:
                break
            assert all(p.poll() is None for p in procs), "a worker exited before the group was stable"
            assert time.monotonic() - t0 < 180, f"group not stable after 180 s: {[sorted(a) for a in shares]}"
            time.sleep(0.2)
        joined = time.monotonic() - t0
        gate.touch()
        lake = Lake(s.lake)
        while _rows(lake) < len(payloads):
            assert all(p.poll() is None for p in procs), "a worker exited before landing everything"
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    res = _summarize([_result(p) for p in procs])
    res["join_seconds"] = joined
    return res


def _assignments(log: Path) -> list[set[str]]:
    """The partitions of each assignment a worker logged, in order."""
    return [set(re.findall(r"\('[^']+', \d+\)", m.group(1))) for m in ASSIGNED.finditer(log.read_text())]


def _rows(lake: Lake) -> int:
    """Rows landed in the inferences and feedback tables (from the Delta log: no data file is read)."""
    n = 0
    for table in ("inferences", "feedback"):
        if DeltaTable.is_deltatable(str(lake.path(table))):
            n += sum(DeltaTable(str(lake.path(table))).get_add_actions(flatten=True).column("num_records").to_pylist())
    return n


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
    corpus = load_corpus(default_shared_data())
    for e in generate(corpus, int(n_events / 1.55), seed=1, prefix="bench", metadata=metadata):
        events.append(e)
        if len(events) >= n_events:
            break
    return events


def build_control(n_events: int) -> list[dict]:
    """The events without metadata, each carrying its metadata's bytes as plain text instead (see the module
    docstring): a lane of the metadata lane's size whose extra bytes are a string, not an object."""
    def text_of(e: dict, m: dict) -> dict:
        filler = json.dumps(m["metadata"]).replace('"', "'")  # as many bytes, none escaped
        return {**e, "output": e["output"] + filler} if "output" in e else {**e, "comment": filler}
    return [text_of(e, m) for e, m in zip(build(n_events, False), build(n_events, True))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=None, help="partitions per topic (default 4; 6 with --workers)")
    ap.add_argument("--workers", default="1", help="N: measure scale-out with 1, 2, ... N worker processes in one "
                    "group (or a comma-separated list of counts); 1: the landing worker against the raw baseline")
    ap.add_argument("--control", action="store_true", help="also land a third lane: the events without metadata "
                    "carrying the metadata's bytes as plain text (what the bytes alone cost)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of baseline-then-workers; medians are reported "
                    "(on a shared machine one round varies by about 10%%)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    counts = [int(x) for x in args.workers.split(",")]
    if len(counts) == 1 and counts[0] > 1:
        counts = list(range(1, counts[0] + 1))
    if min(counts) < 1:
        ap.error("--workers counts must be at least 1")
    scaling = counts != [1]
    if scaling and 1 not in counts:
        counts = [1, *counts]  # the ratios are to one worker, measured in the same round
    args.partitions = args.partitions or (6 if scaling else 4)

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    base = Settings.from_env()
    tag = uuid.uuid4().hex[:6]
    s = base.replace(home=home, topic_prefix=f"bench{tag}", partitions=args.partitions, ingest_group=f"bench-{tag}")
    started = False
    if s.uses_embedded_broker:
        s = s.replace(broker_port=broker.free_port())
        _, started = broker.start(s)
    if scaling:
        try:
            scale(s, counts, args.events, args.repeat)
        finally:
            if started:
                broker.stop(s)
            shutil.rmtree(home, ignore_errors=True)
        return
    # Two lanes, the same events without and with `metadata`, on topics of their own.
    lanes = {"": s, "metadata": s.replace(topic_prefix=f"bench{tag}meta", ingest_group=f"bench-{tag}-meta")}
    if args.control:
        lanes["control"] = s.replace(topic_prefix=f"bench{tag}ctl", ingest_group=f"bench-{tag}-ctl")
    try:
        n_events = 0
        for lane, ls in lanes.items():
            ensure_topics(ls)
            payloads = [(ls.inference_topic if event_type_of(e).name == "inference" else ls.feedback_topic,
                         json.dumps(e).encode())
                        for e in (build_control(args.events) if lane == "control" else build(args.events, bool(lane)))]
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
            lane_rates, lane_cpu = {}, {}
            for lane in lanes:
                runs = landed[n, lane]
                rates = lane_rates[lane] = [res["consumed"] / res["seconds"] for res in runs]
                lane_cpu[lane] = [res["consumed"] / res["run_cpu_s"] for res in runs]
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
            # Events per CPU-second of the worker's run (user + system, imports excluded) as well: on a shared
            # machine the wall-clock rate of a round depends on what else ran then, the CPU a lane needs much less so.
            for label, a, b in (("with metadata / without", "metadata", ""),
                                ("same bytes as text / without", "control", ""),
                                ("with metadata / same bytes as text", "metadata", "control")):
                if a in lanes and b in lanes:
                    wall = [x / y for x, y in zip(lane_rates[a], lane_rates[b])]  # each round's neighbours
                    cpu = [x / y for x, y in zip(lane_cpu[a], lane_cpu[b])]
                    print(f"    {label}, {n} worker{'s' if n > 1 else ''}: {statistics.median(wall):.2f}"
                          f"  [{min(wall):.2f}-{max(wall):.2f}] in events/s; {statistics.median(cpu):.2f}"
                          f"  [{min(cpu):.2f}-{max(cpu):.2f}] in events per CPU-second")
        print("goal: a lane at >= 0.25 of the raw rate and >= 100,000 events/s, and with metadata >= 0.9 of without; "
              "peak RSS is the largest worker's")
    finally:
        if started:
            broker.stop(s)
        shutil.rmtree(home, ignore_errors=True)  # a lake per round and worker count: GBs, of no use afterwards


def scale(s: Settings, counts: list[int], n_events: int, repeat: int) -> None:
    """The scale-out measure (see the module docstring): every count once per round, fresh topics for each."""
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    payloads_of = [(event_type_of(e).name == "inference", json.dumps(e).encode()) for e in build(n_events, False)]
    n = len(payloads_of)
    print(f"{n:,} events ({sum(len(v) for _, v in payloads_of) / n:.0f} B mean), {s.partitions} partitions per "
          f"topic, {cores} cores; load average before: {', '.join(f'{x:.1f}' for x in load_before)}")
    gc.collect()
    gc.freeze()
    logs = Path(s.home) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[int, list[dict]] = {c: [] for c in counts}
    for r in range(repeat):
        for c in counts:
            tag = f"w{c}r{r}"
            sc = s.replace(home=Path(s.home) / tag, topic_prefix=f"{s.topic_prefix}{tag}",
                           ingest_group=f"{s.ingest_group}-{tag}")
            payloads = [(sc.inference_topic if inf else sc.feedback_topic, v) for inf, v in payloads_of]
            res = run_gated(sc, c, payloads, logs)
            assert res["consumed"] == n and sum(res["landed"].values()) == n, res
            results[c].append(res)
            shutil.rmtree(sc.home, ignore_errors=True)
        print(f"round {r + 1}/{repeat}: " + ", ".join(
            f"{c} worker{'s' if c > 1 else ''} {n / results[c][-1]['seconds']:,.0f} events/s" for c in counts))
    one = [n / res["seconds"] for res in results[1]]
    print(f"\nmedians of {repeat} round{'s' if repeat > 1 else ''} (range in brackets); ratios are to 1 worker in "
          "the same round; events per CPU-second counts the workers' user+system time")
    print(f"{'':14s}{'events/s':>12s}{'vs 1 worker':>13s}{'events/CPU-s':>14s}{'CPU-s':>8s}{'join s':>8s}")
    for c in counts:
        rates = [n / res["seconds"] for res in results[c]]
        ratios = [a / b for a, b in zip(rates, one)]
        per_cpu = [n / res["cpu_s"] for res in results[c]]
        print(f"{f'{c} worker' + ('s' if c > 1 else ''):14s}{statistics.median(rates):12,.0f}"
              f"{statistics.median(ratios):13.2f}{statistics.median(per_cpu):14,.0f}"
              f"{statistics.median(res['cpu_s'] for res in results[c]):8.1f}"
              f"{statistics.median(res['join_seconds'] for res in results[c]):8.1f}"
              f"  [{min(rates):,.0f}-{max(rates):,.0f}; {min(ratios):.2f}-{max(ratios):.2f}]"
              f"  events per worker in the last round: {results[c][-1]['per_worker']}")
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {cores} cores (other "
          "processes on the machine share them: a ratio below the worker count here is the cores running out)")


if __name__ == "__main__":
    main()
