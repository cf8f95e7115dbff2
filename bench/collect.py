"""Collector throughput and latency: batched HTTP posts against the SDK producing the same events, same run.

    python bench/collect.py [--events 60000] [--batch 500] [--concurrency 2] [--rates 10000,20000,30000]
                            [--repeat 3]

1. builds N realistic events (inference and feedback, from ../shared/data or the bundled corpus) and cuts them
   into NDJSON batches of `--batch` events of one type, the two types interleaved;
2. baseline: the SDK (`FlywheelClient`: validated per event, produced, flushed) sends the same events to topics
   of their own;
3. the client's ceiling: the same posts to a trivial endpoint (uvicorn as `flywheel collect` runs it, an app that
   only reads the body and counts its lines), so a client that cannot post fast enough is seen, not blamed on the
   collector;
4. `flywheel collect` runs in a process of its own on 127.0.0.1 (a free port, an API key), and after an untimed
   warm-up post of each kind per client (its events are counted in the topics, not in the rates):
   - saturation: `--concurrency` clients post the batches, each waiting for its 202 (given once the broker
     acknowledged every event) before the next post: the most the collector answers, and the latency at that load;
   - offered load, for each of `--rates`: posts are sent on a fixed schedule (open loop: a post does not wait for
     the previous answer), and a post's latency runs from its scheduled time, so a collector falling behind shows
     as latency instead of slowing the offered load down (no coordinated omission);
5. repeats 2 to 4 (`--repeat`), checks that every topic holds exactly the events sent, prints each round, the
   medians and ranges, the collector's CPU per event by thread, and whether the goal held.

Bounded: a fixed number of events per round, a 120 s cap per round, loopback only; the broker is the embedded one
(or FLYWHEEL_KAFKA_BOOTSTRAP). Goal: an offered 20,000 events/s of batched posts sustained with p99 < 100 ms.
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
from collections.abc import Callable
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
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-ndjson"}
MAX_IN_FLIGHT = 16
"""Connections of the open-loop client: posts due while all are busy wait for one (their latency counts from
when they were due)."""
GOAL_RATE, GOAL_P99_MS = 20_000, 100.0


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


def _wait_ready(proc: subprocess.Popen, url: str, what: str) -> None:
    deadline = time.monotonic() + READY_CAP_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"the {what} exited"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the {what} did not get ready in {READY_CAP_S:g} s")


def start_collector(s: Settings, port: int) -> subprocess.Popen:
    env = {**os.environ, "FLYWHEEL_HOME": str(s.home), "FLYWHEEL_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
           "FLYWHEEL_BROKER_PORT": str(s.broker_port), "FLYWHEEL_TOPIC_PREFIX": s.topic_prefix,
           "FLYWHEEL_PARTITIONS": str(s.partitions), "FLYWHEEL_COLLECTOR_API_KEYS": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "collect", "--port", str(port)], env=env,
                            stdin=subprocess.DEVNULL)
    _wait_ready(proc, f"http://127.0.0.1:{port}/readyz", "collector")
    return proc


async def null_app(scope: dict, receive: Callable, send: Callable) -> None:
    """The trivial endpoint: reads the body, answers 202 with its line count (and 200 to GET, for readiness)."""
    if scope["type"] != "http":
        return
    lines, more = 0, True
    while more:
        message = await receive()
        lines += message.get("body", b"").count(b"\n")
        more = message.get("more_body", False)
    body = json.dumps({"accepted": lines}).encode()
    await send({"type": "http.response.start", "status": 202 if scope["method"] == "POST" else 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def start_null(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-null", str(port)], stdin=subprocess.DEVNULL)
    _wait_ready(proc, f"http://127.0.0.1:{port}/", "trivial endpoint")
    return proc


Batch = tuple[str, bytes, int]


class Connection:
    """One keep-alive HTTP/1.1 connection posting with a fixed set of headers, and nothing else: httpx spent about
    12 us of CPU per event of a 1,000-event post (measured here, load average 16-20), as much as a third of the
    collector's own, on the same 2 cores. The collector (uvicorn) answers with a Content-Length, always."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer = reader, writer
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **HEADERS}.items()).encode()

    @classmethod
    async def open(cls, base: str) -> Connection:
        host, port = base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (path.encode(), self.head, len(body)))
        self.writer.write(body)
        await self.writer.drain()
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def _accepted(status: int, answer: bytes) -> int:
    assert status == 202, answer[:500]
    return int(json.loads(answer)["accepted"])


async def post_all(base: str, batches: list[Batch], concurrency: int) -> tuple[float, list[float], int]:
    """Closed loop: (seconds, per-request latencies, events accepted) for posting every batch with `concurrency`
    clients, each waiting for its answer before its next post."""
    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    latencies: list[float] = []
    accepted = 0
    deadline = time.monotonic() + ROUND_CAP_S
    connections = [await Connection.open(base) for _ in range(concurrency)]

    async def client(http: Connection) -> None:
        nonlocal accepted
        while not queue.empty() and time.monotonic() < deadline:
            path, body, n = queue.get_nowait()
            t0 = time.perf_counter()
            status, answer = await http.post(path, body)
            latencies.append(time.perf_counter() - t0)
            accepted += _accepted(status, answer)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        for c in connections:
            c.close()
    return time.perf_counter() - t0, latencies, accepted


async def post_at_rate(base: str, batches: list[Batch], rate: float) -> tuple[float, list[float], int]:
    """Open loop: post batch i at start + (events before it) / `rate`, whatever the answers so far; (seconds from
    the start to the last answer, latencies from each post's scheduled time, events accepted)."""
    latencies: list[float] = []
    accepted = 0
    # Connected before the clock starts, as a steady client is.
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(MAX_IN_FLIGHT):
        idle.put_nowait(await Connection.open(base))

    async def post(path: str, body: bytes, due: float) -> None:
        nonlocal accepted
        http = await idle.get()
        try:
            status, answer = await http.post(path, body)
        finally:
            idle.put_nowait(http)
        latencies.append(time.perf_counter() - due)
        accepted += _accepted(status, answer)

    tasks, sent = [], 0
    t0 = time.perf_counter()
    try:
        for path, body, n in batches:
            due = t0 + sent / rate
            sent += n
            if due - time.perf_counter() > 0:
                await asyncio.sleep(due - time.perf_counter())
            if time.perf_counter() - t0 > ROUND_CAP_S:
                break
            tasks.append(asyncio.create_task(post(path, body, due)))
        await asyncio.gather(*tasks)
    finally:
        while not idle.empty():
            idle.get_nowait().close()
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


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of `pid`, summed by thread name (librdkafka's broker threads as one)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        name = "event loop" if task.name == str(pid) else "rdk:broker" if name.startswith("rdk:broker") else name
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleave(by_type: dict[str, list[bytes]], size: int) -> list[Batch]:
    """NDJSON batches of up to `size` events of one type, the types interleaved in proportion (as traffic is)."""
    cut = {name: [(f"/v1/{name}", b"\n".join(lines[i:i + size]) + b"\n", len(lines[i:i + size]))
                  for i in range(0, len(lines), size)] for name, lines in by_type.items()}
    placed = [((k + 0.5) / len(bs), b) for bs in cut.values() for k, b in enumerate(bs)]
    return [b for _, b in sorted(placed, key=lambda x: x[0])]


def summary(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--batch", type=int, default=500,
                    help="events per POST (500: OpenTelemetry's batch exporters send 512)")
    ap.add_argument("--concurrency", type=int, default=2, help="clients posting at once, in the closed loop")
    ap.add_argument("--rates", default="10000,20000,30000", help="offered loads (events/s) of the open loop")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (the machine is shared)")
    ap.add_argument("--serve-null", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_null:
        import uvicorn

        uvicorn.run(null_app, host="127.0.0.1", port=args.serve_null, log_level="warning", access_log=False,
                    lifespan="off")
        return
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    home = Path(tempfile.mkdtemp(prefix="flywheel-bench-collect-"))
    s = Settings.from_env().replace(home=home, partitions=args.partitions)
    started, broker_pid = False, None
    if s.uses_embedded_broker:
        s = s.replace(broker_port=broker.free_port())
        status, started = broker.start(s)
        broker_pid = status.pid
    try:
        events = []
        for e in generate(load_corpus(), int(args.events / 1.55), seed=1, prefix="bench"):
            events.append(e)
            if len(events) >= args.events:
                break
        by_type: dict[str, list[bytes]] = {"inference": [], "feedback": []}
        for e in events:
            by_type[event_type_of(e).name].append(json.dumps(e, ensure_ascii=False).encode())
        batches = interleave(by_type, args.batch)
        total = sum(n for _, _, n in batches)
        mb = sum(len(b) for _, b, _ in batches) / 1e6
        print(f"{total:,} events ({len(by_type['inference']):,} inferences), {mb:.1f} MB, {len(batches)} batches "
              f"of up to {args.batch}; closed loop: {args.concurrency} clients; open loop: "
              f"{', '.join(f'{r:,.0f}' for r in rates)} events/s offered; {os.cpu_count()} cores, shared")

        base_rates, null_rates, rates_sat, p50_sat, p99_sat, cpus = [], [], [], [], [], []
        client_cpus: list[float] = []
        broker_cpus: list[float] = []
        offered: dict[float, list[tuple[float, float, float]]] = {r: [] for r in rates}
        threads: dict[str, float] = {}
        for rnd in range(args.repeat):
            sb = s.replace(topic_prefix=f"bsdk{uuid.uuid4().hex[:6]}")
            ensure_topics(sb)
            t_sdk = baseline(sb, events)
            assert count(sb, sb.inference_topic) + count(sb, sb.feedback_topic) == total
            base_rates.append(total / t_sdk)

            port = broker.free_port()
            null = start_null(port)
            try:
                null_s, null_lat, null_n = asyncio.run(post_all(f"http://127.0.0.1:{port}", batches,
                                                                args.concurrency))
            finally:
                null.terminate()
                null.wait(30)
            assert null_n == total, f"the trivial endpoint counted {null_n:,} of {total:,} events"
            null_rates.append(total / null_s)

            sc = s.replace(topic_prefix=f"bcol{uuid.uuid4().hex[:6]}")
            port = broker.free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start_collector(sc, port)
            sent = 0
            try:
                # Warm-up, not timed: the first post of each kind per connection (new connection, first use of
                # each validator's fast path) took 2-3 times a steady one.
                warm = [next(b for b in batches if b[0] == path) for path in ("/v1/inference", "/v1/feedback")]
                _, _, warmed = asyncio.run(post_all(base, warm * args.concurrency, args.concurrency))
                sent += warmed
                cpu0, th0 = cpu_seconds(proc.pid), thread_seconds(proc.pid)
                own0, broker0 = time.process_time(), cpu_seconds(broker_pid) if broker_pid else 0.0
                seconds, lat, accepted = asyncio.run(post_all(base, batches, args.concurrency))
                cpus.append((cpu_seconds(proc.pid) - cpu0) / total * 1e6)
                client_cpus.append((time.process_time() - own0) / total * 1e6)
                if broker_pid:
                    broker_cpus.append((cpu_seconds(broker_pid) - broker0) / total * 1e6)
                for name, sec in thread_seconds(proc.pid).items():
                    threads[name] = threads.get(name, 0.0) + (sec - th0.get(name, 0.0)) / total * 1e6 / args.repeat
                assert accepted == total, f"round {rnd + 1} hit the {ROUND_CAP_S:g}s cap: {accepted:,} of {total:,}"
                sent += accepted
                rates_sat.append(total / seconds)
                p50_sat.append(pct(lat, 0.50) * 1e3)
                p99_sat.append(pct(lat, 0.99) * 1e3)
                line = [f"round {rnd + 1}/{args.repeat}: SDK {base_rates[-1]:,.0f} events/s; trivial endpoint "
                        f"{null_rates[-1]:,.0f} (p99 {pct(null_lat, 0.99) * 1e3:.0f} ms); collector saturated "
                        f"{rates_sat[-1]:,.0f} events/s, p50 {p50_sat[-1]:.0f} ms, p99 {p99_sat[-1]:.0f} ms, "
                        f"{cpus[-1]:.1f} us CPU/event"]
                for rate in rates:
                    secs, lat, accepted = asyncio.run(post_at_rate(base, batches, rate))
                    assert accepted == total, f"offered {rate:,.0f}/s hit the {ROUND_CAP_S:g}s cap"
                    sent += accepted
                    offered[rate].append((total / secs, pct(lat, 0.50) * 1e3, pct(lat, 0.99) * 1e3))
                    a, p50, p99 = offered[rate][-1]
                    line.append(f"offered {rate:,.0f}/s: {a:,.0f} events/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms")
                # The server's own view (all posts of the round): a tail the server does not see is the clients'
                # or the machine's (scheduling), not the collector's.
                share, mean = server_share_under(base, 0.1)
                line.append(f"server side {share:.0%} of posts within 100 ms, mean {mean * 1e3:.0f} ms; "
                            f"load average {os.getloadavg()[0]:.1f}")
            finally:
                proc.terminate()
                proc.wait(30)
            landed = count(sc, sc.inference_topic) + count(sc, sc.feedback_topic)
            assert landed == sent, f"{landed:,} events in the topics for {sent:,} accepted"
            print(";\n    ".join(line))

        print(f"\nmedians of {args.repeat} rounds [range]; ratios to the SDK baseline of the same round")
        print(f"SDK producing directly (baseline):   {summary(base_rates)} events/s")
        print(f"client ceiling (trivial endpoint):   {summary(null_rates)} events/s")
        print(f"collector, saturated (closed loop):  {summary(rates_sat)} events/s "
              f"({summary([c / b for c, b in zip(rates_sat, base_rates)], '.1f')}x the SDK), "
              f"p50 {summary(p50_sat)} ms, p99 {summary(p99_sat)} ms")
        met = None
        for rate in rates:
            got = [a for a, _, _ in offered[rate]]
            p99s = [p for _, _, p in offered[rate]]
            print(f"collector, {rate:>9,.0f} events/s offered: {summary(got)} events/s, "
                  f"p50 {summary([p for _, p, _ in offered[rate]])} ms, p99 {summary(p99s)} ms")
            if rate == GOAL_RATE:
                met = statistics.median(got) >= 0.98 * rate and statistics.median(p99s) < GOAL_P99_MS
        print(f"collector CPU {summary(cpus, '.1f')} us/event (one core: {1e6 / statistics.median(cpus):,.0f} "
              "events/s), by thread: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                    sorted(threads.items(), key=lambda kv: -kv[1]) if v >= 0.1))
        spent = statistics.median(cpus) + statistics.median(client_cpus) + (
            statistics.median(broker_cpus) if broker_cpus else 0.0)
        print(f"CPU per event, saturated: collector {statistics.median(cpus):.1f}, bench client "
              f"{statistics.median(client_cpus):.1f}, broker "
              f"{f'{statistics.median(broker_cpus):.1f}' if broker_cpus else '(not ours)'} us: all of "
              f"{os.cpu_count()} idle cores would give at most {(os.cpu_count() or 1) * 1e6 / spent:,.0f} events/s")
        print(f"goal: {GOAL_RATE:,} events/s offered, sustained with p99 < {GOAL_P99_MS:g} ms: "
              f"{'not measured (add it to --rates)' if met is None else 'met' if met else 'NOT met'} "
              "(medians); every accepted event was found in its topic")
    finally:
        if started:
            broker.stop(s)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
