"""Collector throughput and latency: batched HTTP posts against the SDK producing the same events, same run.

    python bench/collect.py [--events 60000] [--batch 1000] [--concurrency 2] [--repeat 3]

1. builds N realistic events (inference and feedback, from ../shared/data or the bundled corpus) and cuts them
   into NDJSON batches of `--batch` events of one type;
2. baseline: the SDK (`FlywheelClient`: validated per event, produced, flushed) sends the same events to topics
   of their own;
3. `flywheel collect` runs in a process of its own on 127.0.0.1 (a free port, an API key) and `--concurrency`
   clients post the batches to it (`/v1/inference`, `/v1/feedback`), each waiting for its 202 (given once the
   broker acknowledged every event) before the next post; every request's latency is kept (after an untimed
   warm-up post of each kind per client: its events are counted in the topics, not in the rates);
4. repeats 2 and 3 (`--repeat`), checks that every topic holds exactly the events sent, and prints the median
   rates, the median p50/p99 latency and the ranges.

Bounded: a fixed number of events, a 120 s cap per round, loopback only; the broker is the embedded one (or
FLYWHEEL_KAFKA_BOOTSTRAP). Goal: >= 20,000 events/s with p99 < 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx
from confluent_kafka import Consumer, TopicPartition

from flywheel.config import Settings
from flywheel.infra import broker
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams.client import FlywheelClient
from flywheel.streams.topics import ensure_topics

KEY = uuid.uuid4().hex
ROUND_CAP_S = 120.0
READY_CAP_S = 90.0
"""Start-up (imports, planning the validators' queries) took 24 s on the 2 cores at a load average of 11."""


def count(s: Settings, topic: str) -> int:
    """Messages in `topic`, read to the end of every partition (Tansu's watermarks can under-report)."""
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "bench-count", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 20, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(s.partitions)])
    n, eof, deadline = 0, set(), time.monotonic() + 60
    while len(eof) < s.partitions and time.monotonic() < deadline:
        for m in c.consume(10_000, 0.2):
            if m.error():
                eof.add(m.partition())
            else:
                n += 1
    c.close()
    return n


def baseline(s: Settings, events: list[dict]) -> float:
    client = FlywheelClient(s)
    t0 = time.perf_counter()
    for e in events:
        client.send(e)
    client.flush()
    elapsed = time.perf_counter() - t0
    client.close()
    return elapsed


def start_collector(s: Settings, port: int) -> subprocess.Popen:
    env = {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix,
           "FLYWHEEL_PARTITIONS": str(s.partitions), "FLYWHEEL_COLLECTOR_API_KEYS": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "collect", "--port", str(port)], env=env,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + READY_CAP_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "the collector exited"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the collector did not get ready in {READY_CAP_S:g} s")


async def post_all(base: str, batches: list[tuple[str, bytes, int]], concurrency: int
                   ) -> tuple[float, list[float], int]:
    """(seconds, per-request latencies, events accepted) for posting every batch with `concurrency` clients."""
    queue: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    latencies: list[float] = []
    accepted = 0
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
    deadline = time.monotonic() + ROUND_CAP_S

    async def client() -> None:
        nonlocal accepted
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as http:
            while not queue.empty() and time.monotonic() < deadline:
                path, body, n = queue.get_nowait()
                t0 = time.perf_counter()
                r = await http.post(path, content=body)
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 202, r.text
                accepted += r.json()["accepted"]

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies, accepted


def server_share_under(base: str, seconds: float) -> tuple[float, float]:
    """From the collector's own /metrics: (share of event posts it answered within `seconds`, mean seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    under = count_ = total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for smp in family.samples:
            if smp.labels.get("route") not in ("/v1/inference", "/v1/feedback"):
                continue
            if smp.name.endswith("_bucket") and float(smp.labels["le"]) == seconds:
                under += smp.value
            elif smp.name == "flywheel_collector_request_duration_seconds_count":
                count_ += smp.value
            elif smp.name == "flywheel_collector_request_duration_seconds_sum":
                total += smp.value
    return under / max(count_, 1), total / max(count_, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=1000, help="events per POST")
    ap.add_argument("--concurrency", type=int, default=2, help="clients posting at once")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (the machine is shared)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-collect-"))
    s = Settings.from_env().replace(home=home, partitions=args.partitions)
    started = False
    if s.uses_embedded_broker:
        s = s.replace(broker_port=broker.free_port())
        _, started = broker.start(s)
    try:
        events = []
        for e in generate(load_corpus(), int(args.events / 1.55), seed=1, prefix="bench"):
            events.append(e)
            if len(events) >= args.events:
                break
        by_type: dict[str, list[bytes]] = {"inference": [], "feedback": []}
        for e in events:
            by_type[event_type_of(e).name].append(json.dumps(e, ensure_ascii=False).encode())
        batches = [(f"/v1/{name}", b"\n".join(lines[i:i + args.batch]) + b"\n", len(lines[i:i + args.batch]))
                   for name, lines in by_type.items() for i in range(0, len(lines), args.batch)]
        total = sum(n for _, _, n in batches)
        mb = sum(len(b) for _, b, _ in batches) / 1e6
        print(f"{total:,} events ({len(by_type['inference']):,} inferences), {mb:.1f} MB, {len(batches)} batches "
              f"of up to {args.batch}; {args.concurrency} clients; {os.cpu_count()} cores, shared with other work")

        base_rates, rates, p50s, p99s, cpus = [], [], [], [], []
        for r in range(args.repeat):
            sb = s.replace(topic_prefix=f"bsdk{uuid.uuid4().hex[:6]}")
            ensure_topics(sb)
            t_sdk = baseline(sb, events)
            assert count(sb, sb.inference_topic) + count(sb, sb.feedback_topic) == total
            base_rates.append(total / t_sdk)

            sc = s.replace(topic_prefix=f"bcol{uuid.uuid4().hex[:6]}")
            port = broker.free_port()
            proc = start_collector(sc, port)
            try:
                # Warm-up, not timed: the first post of each kind per connection (new connection, first use of
                # each validator's fast path) took 2-3 times a steady one.
                warm = [next(b for b in batches if b[0] == path) for path in ("/v1/inference", "/v1/feedback")]
                _, _, warmed = asyncio.run(post_all(f"http://127.0.0.1:{port}", warm * args.concurrency,
                                                    args.concurrency))
                cpu0 = cpu_seconds(proc.pid)
                seconds, lat, accepted = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches, args.concurrency))
                cpus.append((cpu_seconds(proc.pid) - cpu0) / total * 1e6)
                # The server's own view (warm-up posts included): a tail the server does not see is the clients'
                # or the machine's (scheduling), not the collector's.
                share, mean = server_share_under(f"http://127.0.0.1:{port}", 0.1)
            finally:
                proc.terminate()
                proc.wait(30)
            assert accepted == total, f"round {r + 1} hit the {ROUND_CAP_S:g}s cap: {accepted:,} of {total:,} sent"
            landed = count(sc, sc.inference_topic) + count(sc, sc.feedback_topic)
            assert landed == total + warmed, f"{landed:,} events in the topics for {total + warmed:,} accepted"
            rates.append(total / seconds)
            p50s.append(pct(lat, 0.50) * 1e3)
            p99s.append(pct(lat, 0.99) * 1e3)
            print(f"round {r + 1}/{args.repeat}: SDK {base_rates[-1]:,.0f} events/s; collector {rates[-1]:,.0f} "
                  f"events/s, p50 {p50s[-1]:.1f} ms, p99 {p99s[-1]:.1f} ms over {len(lat)} posts; collector CPU "
                  f"{cpus[-1]:.1f} us/event; server side: {share:.1%} of posts answered within 100 ms, mean "
                  f"{mean * 1e3:.1f} ms; load average {os.getloadavg()[0]:.1f}")

        print(f"\nmedians of {args.repeat} rounds [range]")
        print(f"SDK producing directly (baseline): {statistics.median(base_rates):,.0f} events/s "
              f"[{min(base_rates):,.0f}-{max(base_rates):,.0f}]")
        print(f"collector, batched HTTP posts:     {statistics.median(rates):,.0f} events/s "
              f"[{min(rates):,.0f}-{max(rates):,.0f}], p50 {statistics.median(p50s):.1f} ms, "
              f"p99 {statistics.median(p99s):.1f} ms [{min(p99s):.1f}-{max(p99s):.1f}]; collector CPU "
              f"{statistics.median(cpus):.1f} us/event (one core: {1e6 / statistics.median(cpus):,.0f} events/s)")
        print("goal: >= 20,000 events/s with p99 < 100 ms; every accepted event was found in its topic")
    finally:
        if started:
            broker.stop(s)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
