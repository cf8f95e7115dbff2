"""A soak of the running lane: events at a steady rate for a while, through Kafka and the collector, into the lake.

The long-running processes are the real commands (`flywheel ingest`, `flywheel collect`, `flywheel signals`), each
in a process of its own. A producer thread paces events (inferences with their feedback, from the bundled corpus,
with fresh ids and the send time as their `timestamp`) in ticks of `TICK_S`: most straight to Kafka, a share as
batched NDJSON posts to the collector. A monitor samples every process's resident memory, and a probe in a process
of its own watches the lake: each new Delta version of `inferences` is dated by its commit file (the moment it
became readable), and an event's latency is that moment minus its `timestamp` (event-to-queryable).
At the end the producer stops, the lake is drained, and every event is counted exactly once.

Used by `bench/soak.py` (30 minutes at 5,000 events/s) and by the reliability tier's short soak.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from confluent_kafka import Producer

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.schemas.contract import event_type_of
from flywheel.streams.security import librdkafka_config
from flywheel.warehouse.query import connect

TICK_S = 0.05
POLL_S = 0.2
POSTERS = 4
"""Posts to the collector under way at once (each waits for its 202)."""
API_KEY = "soak-key"
PROCESSES = ("ingest", "collect", "signals")
WARM_UP = 2
"""Inferences sent (and waited for) before the clock starts: landed and counted, but in no rate or latency."""


@dataclass(frozen=True)
class SoakPlan:
    rate: int = 5_000
    """Events per second offered (inferences and feedback together)."""
    seconds: float = 60.0
    """How long events are offered."""
    collector_share: float = 0.2
    """Share of the events posted to the collector (the rest go straight to Kafka)."""
    sample_s: float = 5.0
    """How often each process's memory is sampled (and a line printed, with `progress`)."""
    drain_s: float = 120.0
    """How long the lake may take, after the last event, to hold every event."""
    linger_ms: int = 20
    """How long the soak's own producer (the apps' share straight to Kafka) gathers events into one batch."""


@dataclass(frozen=True)
class Sample:
    at_s: float
    """Seconds since the first event was offered."""
    rss_mb: dict[str, float]
    """Resident memory of each long-running process (VmRSS)."""
    sent: int
    landed: int
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process has used so far (user + system), the broker's too when it runs here."""
    load1: float = float("nan")
    """The machine's 1-minute load average: the soak shares the machine, and its figures say how busy it was."""


@dataclass
class SoakReport:
    plan: SoakPlan
    sent: int = 0
    sent_via_collector: int = 0
    offered_seconds: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start the event was sent, its event-to-queryable latency in seconds), per landed inference."""
    landed: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    posts: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start a collector post was queued, seconds from queued to its 202), per post: the share of
    an event's latency that the soak's own posting (and the collector's answer) takes."""
    undelivered: list[str] = field(default_factory=list)
    """Events produced straight to Kafka that the broker never acknowledged (the delivery report's error)."""
    shortfall: list[str] = field(default_factory=list)
    """When fewer events landed than were sent: where the missing ones are (see `_trace_shortfall`)."""

    @property
    def rate(self) -> float:
        return self.sent / self.offered_seconds if self.offered_seconds else 0.0

    def latency(self, q: float, start: float = 0.0, end: float = float("inf")) -> float:
        """The `q` quantile of the latencies of events sent in [start, end) seconds."""
        xs = sorted(lat for at, lat in self.latencies if start <= at < end)
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def windows(self, n: int) -> list[tuple[float, float]]:
        step = self.offered_seconds / n
        return [(i * step, (i + 1) * step) for i in range(n)]

    def rss(self, name: str, start: float = 0.0, end: float = float("inf")) -> float:
        """The largest resident memory of process `name` sampled in [start, end) seconds (MB)."""
        xs = [s.rss_mb[name] for s in self.samples if start <= s.at_s < end and name in s.rss_mb]
        return max(xs) if xs else float("nan")

    def lines(self) -> list[str]:
        windows = self.windows(min(6, max(1, int(self.offered_seconds // 10))))
        out = [f"offered {self.sent:,} events in {self.offered_seconds:.0f} s ({self.rate:,.0f} events/s, target "
               f"{self.plan.rate:,}), {self.sent_via_collector:,} through the collector",
               f"landed {self.landed} (distinct ids {self.distinct}, expected {self.expected}); "
               f"{len(self.undelivered)} not acknowledged by the broker {self.undelivered[:3]}",
               *self.shortfall,
               "window      sent  latency p50   p90   p99   " + "  ".join(f"{p} RSS MB" for p in PROCESSES)]
        for a, b in self.windows(min(6, max(1, int(self.offered_seconds // 10)))):
            out.append(f"{a:5.0f}-{b:<4.0f} {sum(1 for t, _ in self.latencies if a <= t < b):7,}"
                       f"  {self.latency(0.5, a, b):9.2f} s {self.latency(0.9, a, b):5.2f} s "
                       f"{self.latency(0.99, a, b):5.2f} s  "
                       + "  ".join(f"{self.rss(p, a, b):12.0f}" for p in PROCESSES))
        out.append(f"overall latency p50 {self.latency(0.5):.2f} s, p99 {self.latency(0.99):.2f} s")
        out.append("collector posts, queued to 202, p50/p99 by window: " + "; ".join(
            f"{_quantile([w for at, w in self.posts if a <= at < b], 0.5):.2f}/"
            f"{_quantile([w for at, w in self.posts if a <= at < b], 0.99):.2f} s"
            for a, b in self.windows(min(6, max(1, int(self.offered_seconds // 10))))))
        if any("broker" in s.rss_mb for s in self.samples):
            out.append("broker RSS MB by window: " + ", ".join(
                    f"{self.rss('broker', a, b):.0f}" for a, b in windows))
        out.append("load average (1 min), largest by window: " + ", ".join(
            f"{max((s.load1 for s in self.samples if a <= s.at_s < b), default=float('nan')):.1f}"
            for a, b in windows))
        names = sorted({n for s in self.samples for n in s.cpu_s})
        if names:
            out.append("CPU, % of one core, by window: " + "; ".join(
                f"{a:.0f}-{b:.0f} s " + ", ".join(f"{n} {self.cpu(n, a, b):.0f}" for n in names)
                for a, b in self.windows(min(6, max(1, int(self.offered_seconds // 10))))))
        return out

    def cpu(self, name: str, start: float, end: float) -> float:
        """Process `name`'s CPU use between the samples nearest `start` and `end`, in % of one core: a busier
        broker or worker late in the soak says where a rising latency comes from."""
        xs = [s for s in self.samples if name in s.cpu_s]
        a = min(xs, key=lambda s: abs(s.at_s - start), default=None)
        b = min(xs, key=lambda s: abs(s.at_s - end), default=None)
        if a is None or b is None or b.at_s <= a.at_s:
            return float("nan")
        return 100 * (b.cpu_s[name] - a.cpu_s[name]) / (b.at_s - a.at_s)


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return None


class _Lake:
    """New inferences, as their Delta versions appear: (timestamp, time it became queryable) per row.

    An event is queryable once the commit file of its version (`_delta_log/<version>.json`) exists: a reader that
    opens the table then sees it. The probe, in a process of its own, takes that file's modification time as the
    moment, so the figure depends neither on when the probe gets to look (it polls every `POLL_S`, and a loaded
    machine can starve it) nor on what it costs; only then does it read the files that commit added (their
    `timestamp` column). An earlier probe opened the table and listed all its files before it stamped, in the
    producer's process: its own cost grew with the table (11 -> 81 ms over a 30-minute soak) and it contended with
    the producer for the GIL, so part of the latency it reported as climbing was its own."""

    def __init__(self, lake: Path) -> None:
        ctx = multiprocessing.get_context("spawn")  # the parent runs threads and a librdkafka producer: no fork
        self._queue: Any = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_probe, args=(str(lake / "inferences"), self._queue, self._stop),
                                 name="soak-probe", daemon=True)
        self._proc.start()

    def poll(self) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        while True:
            try:
                seen, stamps = self._queue.get_nowait()
            except queue.Empty:
                if not self._proc.is_alive() and self._proc.exitcode not in (0, None):
                    raise RuntimeError(f"soak: the latency probe exited with code {self._proc.exitcode}") from None
                return out
            out += [(t, seen) for t in stamps]

    def close(self) -> None:
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _probe(table: str, out: Any, stop: Any) -> None:
    """The probe's process (see `_Lake`): puts (queryable at, [event timestamps]) per new version of `table`."""
    log = Path(table) / "_delta_log"
    version = 0
    while not stop.is_set():
        commit = log / f"{version:020d}.json"
        try:
            seen = commit.stat().st_mtime  # written once, under a temporary name, and moved into place
        except FileNotFoundError:
            time.sleep(POLL_S)
            continue
        version += 1
        stamps: list[float] = []
        for line in commit.read_text().splitlines():
            add = json.loads(line).get("add") if line.strip() else None
            # dataChange false: a compaction's rewrite of rows already counted
            if add is None or not add.get("dataChange", True):
                continue
            ts = pc.drop_null(pq.read_table(Path(table) / unquote(add["path"]), columns=["timestamp"])["timestamp"])
            micros = pc.cast(pc.cast(ts, pa.timestamp("us", "UTC")), pa.int64()).to_numpy()
            stamps += [t / 1e6 for t in micros.tolist()]
        if stamps:
            out.put((seen, stamps))


def run(settings: Settings, plan: SoakPlan, progress: bool = False, broker_pid: int | None = None) -> SoakReport:
    """Soak the lane described by `settings` (its broker must be running) with `plan`; see the module docstring.
    With `broker_pid` (the broker's process, when it runs on this machine) the broker's CPU and memory are sampled
    beside the lane's processes."""
    port = _free_port()
    env = {**os.environ, "FLYWHEEL_HOME": str(settings.home), "FLYWHEEL_LAKE": settings.lake,
           "FLYWHEEL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "FLYWHEEL_BROKER_PORT": str(settings.broker_port),
           "FLYWHEEL_TOPIC_PREFIX": settings.topic_prefix, "FLYWHEEL_INGEST_GROUP": settings.ingest_group,
           "FLYWHEEL_PARTITIONS": str(settings.partitions), "FLYWHEEL_COLLECTOR_API_KEYS": API_KEY,
           "FLYWHEEL_FLUSH_INTERVAL_S": str(settings.flush_interval_s),
           "FLYWHEEL_SIGNALS_GROUP": f"{settings.ingest_group}-signals"}
    cli = [sys.executable, "-m", "flywheel.cli"]
    logs = Path(settings.home)
    logs.mkdir(parents=True, exist_ok=True)
    procs = {name: subprocess.Popen(cli + args, env=env, stdout=open(logs / f"soak-{name}.log", "wb"),
                                    stderr=subprocess.STDOUT)
             for name, args in (("ingest", ["ingest"]), ("collect", ["collect", "--port", str(port)]),
                                ("signals", ["signals"]))}
    report = SoakReport(plan)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/readyz", procs)
        _offer(settings, plan, port, procs, report, progress, broker_pid)
        _drain(settings, plan, report)
        if report.landed != report.expected:
            report.shortfall = _trace_shortfall(settings)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for name, p in procs.items():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            report.exit_codes[name] = p.returncode
    return report


def _wait_ready(url: str, procs: dict[str, subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"soak: {dead} exited before the soak started (see soak-*.log in FLYWHEEL_HOME)")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"soak: the collector was not ready at {url} within {timeout:.0f} s")


def _events(prefix: str) -> Iterator[tuple[str, bytes]]:
    """Endless payloads: the corpus's events, with ids made unique per pass (`.<pass>` appended) and `timestamp`
    left as the placeholder `_STAMP`, which the sender replaces with the send time. Serialized once: json.dumps
    of every event would take most of the producer thread's time at 5,000 events/s."""
    pool = []
    for e in generate(load_corpus(), 2_000, seed=5, prefix=prefix):
        et = event_type_of(e)
        assert et is not None, "the corpus made an event of no type"
        ids = {k: f"{e[k]}{_PASS.decode()}" for k in ("inference_id", "feedback_id", "other_inference_id") if k in e}
        pool.append((et.name, json.dumps({**e, **ids, "timestamp": _STAMP.decode()}).encode()))
    for n in itertools.count():
        suffix = f".{n}".encode()
        for kind, payload in pool:
            yield kind, payload.replace(_PASS, suffix)


_TABLES = {"inference": ("lake_inferences", "inference_id"), "feedback": ("lake_feedback", "feedback_id")}
"""Per event kind, the lake's raw view and its id column: what the drain counts and a shortfall is traced in."""

_STAMP = b"@@stamp@@"
_PASS = b"@@pass@@"


def _offer(settings: Settings, plan: SoakPlan, port: int, procs: dict[str, subprocess.Popen[bytes]],
           report: SoakReport, progress: bool, broker_pid: int | None) -> None:
    producer = Producer({**librdkafka_config(settings), "bootstrap.servers": settings.kafka_bootstrap,
                         "linger.ms": plan.linger_ms})
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_KEY}",
                                                                        "Content-Type": "application/x-ndjson"})
    lake = _Lake(Path(settings.lake))
    events = _events(f"soak{int(time.time())}")
    try:
        _warm_up(settings, producer, http, lake, events, report)
    except BaseException:
        lake.close()
        raise
    start = time.time()
    stop = threading.Event()

    def monitor() -> None:
        next_sample = 0.0
        while not stop.is_set():
            for ts, seen in lake.poll():
                report.latencies.append((ts - start, seen - ts))
            if time.time() - start >= next_sample:
                pids = {**{n: p.pid for n, p in procs.items()}, **({"broker": broker_pid} if broker_pid else {})}
                rss = {n: r for n, pid in pids.items() if (r := _rss_mb(pid)) is not None}
                cpu = {n: c for n, pid in pids.items() if (c := _cpu_s(pid)) is not None}
                report.samples.append(Sample(time.time() - start, rss, report.sent, len(report.latencies), cpu,
                                             os.getloadavg()[0]))
                if progress:
                    print(f"  {time.time() - start:6.0f} s  sent {report.sent:,}  inferences queryable "
                          f"{len(report.latencies):,}  RSS MB " + " ".join(f"{n} {r:.0f}" for n, r in rss.items()),
                          flush=True)
                next_sample += plan.sample_s
            time.sleep(POLL_S)

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:  # flush() returns 0 for these too: only the delivery report tells
            report.undelivered.append(f"{msg.topic()}: {err}")

    # The collector's posts wait for their 202 (the broker's acknowledgement): they go from threads of their own,
    # so that a slow answer delays the collector's share, which the report shows, and not the pacing of the rest.
    # Several at once, as many apps post: one thread had to finish each post within a tick (25 ms for the two
    # kinds) or fall behind for good, and on a loaded machine it did, so its queue grew by the minute (10-minute
    # soaks at load 13-20: p99 over 100 s, p50 under 2 s) and the soak measured its own backlog as latency.
    posts: queue.Queue[tuple[str, bytes, int, float] | None] = queue.Queue()
    failures: list[str] = []
    counted = threading.Lock()

    def poster() -> None:
        while (item := posts.get()) is not None:
            kind, body, n, queued = item
            try:
                r = http.post(f"/v1/{kind}", content=body, timeout=60)
                if r.status_code == 202:
                    with counted:  # += is a read and a write: two posters could interleave them
                        report.sent_via_collector += n
                    report.posts.append((queued - start, time.time() - queued))
                else:
                    failures.append(f"{r.status_code}: {r.text[:300]}")
            except httpx.HTTPError as e:
                failures.append(repr(e))

    posters = [threading.Thread(target=poster, daemon=True) for _ in range(POSTERS)]
    threads = [threading.Thread(target=monitor, daemon=True), *posters]
    for t in threads:
        t.start()
    per_tick = plan.rate * TICK_S
    due = 0.0
    tick = 0
    try:
        while time.time() - start < plan.seconds:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead or failures:
                raise RuntimeError(f"soak: {dead} exited mid-soak (see soak-*.log in FLYWHEEL_HOME)" if dead
                                   else f"soak: the collector refused a batch: {failures[0]}")
            due += per_tick
            batch: dict[str, list[bytes]] = {"inference": [], "feedback": []}
            now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").encode()
            while due >= 1:
                due -= 1
                kind, template = next(events)
                payload = template.replace(_STAMP, now)
                report.expected[kind] = report.expected.get(kind, 0) + 1
                if (report.sent % 1000) < plan.collector_share * 1000:
                    batch[kind].append(payload)
                else:
                    producer.produce(f"{settings.topic_prefix}.{kind}", payload, on_delivery=delivered)
                report.sent += 1
            producer.poll(0)
            for kind, lines in batch.items():
                if lines:
                    posts.put((kind, b"\n".join(lines), len(lines), time.time()))
            tick += 1
            time.sleep(max(0.0, start + tick * TICK_S - time.time()))
        report.offered_seconds = time.time() - start
        for _ in posters:
            posts.put(None)
        if producer.flush(60):
            raise RuntimeError("soak: events still unsent to Kafka 60 s after the last one")
        for t in posters:
            t.join(timeout=plan.drain_s)
        if failures:
            raise RuntimeError(f"soak: the collector refused a batch: {failures[0]}")
        deadline = time.time() + plan.drain_s
        while len(report.latencies) < report.expected["inference"] - WARM_UP and time.time() < deadline:
            time.sleep(POLL_S)
    finally:
        for _ in posters:
            posts.put(None)
        stop.set()
        threads[0].join()
        lake.close()
        http.close()


def _warm_up(settings: Settings, producer: Producer, http: httpx.Client, lake: _Lake,
             events: Iterator[tuple[str, bytes]], report: SoakReport, timeout: float = 180.0) -> None:
    """One inference through Kafka and one through the collector, waited for in the lake: the soak's clock starts
    once the worker has joined its group and committed, so start-up is not counted as latency."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").encode()
    sent = 0
    while sent < WARM_UP:
        kind, template = next(events)
        if kind != "inference":
            continue
        payload = template.replace(_STAMP, now)
        if sent == 0:
            producer.produce(f"{settings.topic_prefix}.inference", payload)
            producer.flush(30)
        else:
            r = http.post("/v1/inference", content=payload, timeout=60)
            if r.status_code != 202:
                raise RuntimeError(f"soak: the collector answered {r.status_code}: {r.text[:300]}")
        sent += 1
    report.expected["inference"] = WARM_UP
    seen, deadline = 0, time.time() + timeout
    while seen < WARM_UP:
        if time.time() > deadline:
            raise RuntimeError(f"soak: the warm-up events were not queryable within {timeout:.0f} s")
        seen += len(lake.poll())
        time.sleep(POLL_S)


def _drain(settings: Settings, plan: SoakPlan, report: SoakReport) -> None:
    """Counts of landed rows per table, and of distinct ids, once feedback has caught up too (or `drain_s`)."""
    deadline = time.time() + plan.drain_s
    while True:
        con = connect(settings)  # the lake's raw views, at their current versions
        try:
            for kind, (view, key) in _TABLES.items():
                n, d = con.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {view}").fetchall()[0]
                report.landed[kind], report.distinct[kind] = int(n), int(d)
        finally:
            con.close()
        if report.landed == report.expected or time.time() > deadline:
            return
        time.sleep(1.0)


def _trace_shortfall(settings: Settings, idle_s: float = 3.0) -> list[str]:
    """Where the events that did not land are: each topic read from its beginning by a plain consumer (`assign`,
    no group) against the ids the lake holds. An id in the topic but not the lake was lost (or stalled) by the
    lane; one the broker acknowledged but a plain reader does not find, by the broker."""
    from confluent_kafka import Consumer, TopicPartition

    con = connect(settings)
    try:
        landed = {kind: {r[0] for r in con.execute(f"SELECT {key} FROM {view}").fetchall()}
                  for kind, (view, key) in _TABLES.items()}
    finally:
        con.close()
    out = []
    for kind, (_, key) in _TABLES.items():
        topic = f"{settings.topic_prefix}.{kind}"
        consumer = Consumer({**librdkafka_config(settings), "bootstrap.servers": settings.kafka_bootstrap,
                             "group.id": f"soak-trace-{os.getpid()}", "enable.auto.commit": False})
        try:
            partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            where: dict[str, tuple[int, int]] = {}
            last = {p: -1 for p in partitions}
            idle_since = time.time()
            while time.time() - idle_since < idle_s:
                msgs = consumer.consume(10_000, 0.5)
                if msgs:
                    idle_since = time.time()
                for m in msgs:
                    partition, offset, value = m.partition(), m.offset(), m.value()
                    if m.error() is None and partition is not None and offset is not None and value is not None:
                        last[partition] = offset
                        where[json.loads(value)[key]] = (partition, offset)
        finally:
            consumer.close()
        missing = sorted(off for i, off in where.items() if i not in landed[kind])
        if not missing:
            continue
        runs: list[list[int]] = []
        for p, o in missing:
            if runs and runs[-1][0] == p and runs[-1][2] == o - 1:
                runs[-1][2] = o
            else:
                runs.append([p, o, o])
        out.append(f"{kind}: {len(missing)} in the topic but not in the lake, at partition[offsets] "
                   + ", ".join(f"{p}[{a}..{b}]" for p, a, b in runs[:8]) + (" ..." if len(runs) > 8 else "")
                   + f"; the topic's last offsets {last}, its reported ends {ends}")
    return out or ["every id a plain consumer reads from the topics is in the lake: the broker never kept the rest"]


def statistics_line(report: SoakReport) -> str:
    """One line for a closing note: rate, latency p50/p99 overall, and each process's RSS first vs last window."""
    w = report.windows(3)
    rss = ", ".join(f"{p} {report.rss(p, *w[0]):.0f}->{report.rss(p, *w[-1]):.0f} MB" for p in PROCESSES)
    return (f"{report.rate:,.0f} events/s for {report.offered_seconds:.0f} s; latency p50 "
            f"{report.latency(0.5):.2f} s, p99 {report.latency(0.99):.2f} s; RSS first->last third: {rss}; "
            f"latency p99 by third: {', '.join(f'{report.latency(0.99, *x):.2f}' for x in w)} s "
            f"(median of all {statistics.median([x for _, x in report.latencies]) if report.latencies else 0:.2f})")
