"""Live signals from the stream: per (app, model version), in tumbling windows of a minute (faust tables), judged
against the windows just before, so a deploy that breaks things alerts within about a window, long before the
batch drift job runs.

Signals per window and segment: volume (inferences), error rate, latency p95, thumbs-down rate. An inference counts
as an error when its `metadata` (or an unknown top-level field) carries `error` or `status: "error"`, or its
output is empty: the contract has no error field, and an app that logs failed calls says so in metadata.

The faust app is its own consumer group (`SignalSettings.group`), separate from the landing workers'
(`Settings.ingest_group`): it reads the same topics without taking partitions or offsets from them.

Topology (two agents, so each windowed table is updated on the partition of its own key, as faust requires):
1. `route` reads the inference and feedback topics (both keyed by inference id, so an inference and its feedback
   share a partition) and remembers each recent inference's segment in a bounded in-memory map; it forwards one
   small record per inference and per thumbs feedback to an internal topic keyed by segment. Feedback whose
   inference this worker has not seen (before a restart, or older than the map) is counted under no segment.
2. `count` folds those records into the tumbling-window table `signals` (changelogged by faust).
Windows follow the time the app produced each record (its Kafka timestamp); a window's volume waits for `VolumeGate`.
A timer (`check_interval_s`) compares each segment's current window (the one its latest counted record falls in: a
worker that is behind judges what it has read) with the mean of the `baseline_windows` before it
(`SignalDetector`), and hands alerts to the outbox (idempotent per window; cooldown per segment/signal), whose
sender posts them to Slack off the event loop.

Throughput: faust processes events one by one in Python (about 4k events/s per worker on this machine, see
STACK-NOTES); run several workers in the group to share partitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from flywheel.config import Settings, env_settings
from flywheel.errors import ConfigError
from flywheel.schemas.alerts import Alert, AlertItem
from flywheel.streams.metrics import SignalMetrics
from flywheel.streams.security import faust_credentials
from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox, SlackSender

log = logging.getLogger("flywheel.signals")

# Latency histogram: bucket k holds latencies up to LAT_BASE * LAT_STEP**k ms (10 ms .. about 10 min).
LAT_BASE, LAT_STEP, LAT_BUCKETS = 10.0, 1.25, 50
N, ERRORS, THUMBS, DOWNS = 0, 1, 2, 3
HIST = 4
WIDTH = HIST + LAT_BUCKETS
FEEDBACK_WAIT_S = 30.0
"""How long thumbs whose inference has not been seen yet wait for it before counting as unattributed."""
FEEDBACK_WAIT_MAX_S = 120.0
"""How long they wait at most while the inferences this worker reads are still behind the thumbs' own time."""
BEHIND_KEEP_S = 600.0
"""How far behind a worker may fall and still judge rates against the windows before the one it fills."""
VOLUME_GRACE_S = 10.0
"""How long after a window ends its volume waits for records still on their way (half a window when shorter)."""


@dataclass(frozen=True)
class SignalSettings:
    group: str = "flywheel-signals"
    """FLYWHEEL_SIGNALS_GROUP: consumer group (and faust app id) of the live-signal workers."""

    window_s: float = 60.0
    """FLYWHEEL_SIGNALS_WINDOW_S: length of the tumbling windows."""

    baseline_windows: int = 5
    """FLYWHEEL_SIGNALS_BASELINE_WINDOWS: a window is compared with the mean of this many windows before it."""

    check_interval_s: float = 5.0
    """FLYWHEEL_SIGNALS_CHECK_INTERVAL_S: how often the current window is judged (it need not be complete)."""

    min_events: int = 50
    """FLYWHEEL_SIGNALS_MIN_EVENTS: inferences a window (and its baseline) needs before rates are judged."""

    min_thumbs: int = 30
    """FLYWHEEL_SIGNALS_MIN_THUMBS: thumbs a window (and its baseline) needs before the thumbs-down rate is judged."""

    thumbs_down_delta: float = 0.15
    """FLYWHEEL_SIGNALS_THUMBS_DOWN_DELTA: alert when the thumbs-down rate rises by this much (absolute) ..."""

    error_rate_delta: float = 0.05
    """FLYWHEEL_SIGNALS_ERROR_RATE_DELTA: ... the error rate by this much ..."""

    latency_p95_ratio: float = 2.0
    """FLYWHEEL_SIGNALS_LATENCY_P95_RATIO: ... latency p95 grows by this factor ..."""

    volume_ratio: float = 4.0
    """FLYWHEEL_SIGNALS_VOLUME_RATIO: ... or a complete window's volume is this many times above or below the
    baseline mean."""

    z_min: float = 3.0
    """FLYWHEEL_SIGNALS_Z_MIN: a rate change must also be this many standard errors large (no alarms on noise)."""

    max_tracked: int = 500_000
    """FLYWHEEL_SIGNALS_MAX_TRACKED: recent inferences whose segment is remembered to attribute their feedback."""

    def __post_init__(self) -> None:
        for name in ("window_s", "check_interval_s", "baseline_windows"):
            if getattr(self, name) <= 0:
                var = f"FLYWHEEL_SIGNALS_{name.upper()}"
                raise ConfigError(f"{var} must be positive, got {getattr(self, name)!r}", variable=var)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "SignalSettings":
        return env_settings(cls, "FLYWHEEL_SIGNALS_", environ)


# --------------------------------------------------------------------------------------------------- detection


def empty() -> list[int]:
    return [0] * WIDTH


def latency_bucket(ms: float) -> int:
    if ms <= LAT_BASE:
        return 0
    return min(int(math.ceil(math.log(ms / LAT_BASE, LAT_STEP))), LAT_BUCKETS - 1)


def p95(stats: Sequence[int]) -> float | None:
    hist = stats[HIST:]
    total = sum(hist)
    if not total:
        return None
    acc = 0
    for k, c in enumerate(hist):
        acc += c
        if acc >= 0.95 * total:
            return LAT_BASE * LAT_STEP ** k
    return LAT_BASE * LAT_STEP ** (LAT_BUCKETS - 1)


def _sum(windows: Iterable[Sequence[int]]) -> list[int]:
    out = empty()
    for w in windows:
        for i, v in enumerate(w):
            out[i] += v
    return out


@dataclass(frozen=True)
class Signal:
    signal: str
    before: str
    after: str
    method: str
    score: float
    threshold: float


class SignalDetector:
    """Judges one segment's current window against its baseline windows (pure; no Kafka)."""

    def __init__(self, s: SignalSettings) -> None:
        self.s = s

    def _rate(self, name: str, k_c: int, n_c: int, k_b: int, n_b: int, delta: float, minimum: int) -> Signal | None:
        if n_c < minimum or n_b < minimum:
            return None
        rc, rb = k_c / n_c, k_b / n_b
        pooled = (k_c + k_b) / (n_c + n_b)
        se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_c + 1 / n_b))
        if rc - rb >= delta and (rc - rb) / se >= self.s.z_min:
            return Signal(name, f"{rb:.1%}", f"{rc:.1%}", "rate increase", rc - rb, delta)
        return None

    def evaluate(self, current: Sequence[int], baseline: Sequence[Sequence[int]],
                 current_complete: bool = False) -> list[Signal]:
        s = self.s
        base = [b for b in baseline if b[N] or b[THUMBS]]
        if not base:
            return []
        tot = _sum(base)
        out: list[Signal] = []
        for sig in (self._rate("thumbs_down_rate", current[DOWNS], current[THUMBS], tot[DOWNS], tot[THUMBS],
                               s.thumbs_down_delta, s.min_thumbs),
                    self._rate("error_rate", current[ERRORS], current[N], tot[ERRORS], tot[N], s.error_rate_delta,
                               s.min_events)):
            if sig:
                out.append(sig)
        if current[N] >= s.min_events and tot[N] >= s.min_events:
            pc_, pb = p95(current), p95(tot)
            if pc_ and pb and pc_ / pb >= s.latency_p95_ratio:
                out.append(Signal("latency_p95_ms", f"{pb:,.0f} ms", f"{pc_:,.0f} ms", "ratio", pc_ / pb,
                                  s.latency_p95_ratio))
        mean_n = tot[N] / len(baseline)
        # volume needs whole windows throughout: a partial one (the worker started in it) would look like a jump
        if current_complete and len(baseline) == s.baseline_windows and all(b[N] for b in baseline) \
                and mean_n >= s.min_events:
            ratio = current[N] / mean_n
            if ratio >= s.volume_ratio or ratio <= 1 / s.volume_ratio:
                out.append(Signal("volume", f"{mean_n:,.0f}/window", f"{current[N]:,}/window", "ratio", ratio,
                                  s.volume_ratio))
        return out


class VolumeGate:
    """When the volume of the window that just ended may be judged: once this worker has read everything sent in it.

    An unread record of the window would count as traffic that stopped, so the gate waits, from a grace after the
    window's end (records still on their way from a lingering producer), until each of this worker's source
    partitions is read past the window (its last record processed was produced after the window's end) or up to
    where it ended then; then the same for the routed topic (what the router sent from them). A busy worker passes
    once it reads beyond the window, an app that went quiet at once (nothing is left to read). A worker that cannot
    catch up before the next window ends skips the window (`flywheel_signals_volume_windows_skipped_total`) rather
    than judge it on what it has not read.
    """

    def __init__(self, app: Any, sources: Sequence[str], routed: str, done: Mapping[Any, tuple[int, float]],
                 window_s: float, metrics: SignalMetrics) -> None:
        # the app, not its consumer: faust makes the consumer on first use, which must be on the app's loop
        self.app, self.sources, self.routed, self.done = app, set(sources), routed, done
        self.window_s, self.metrics = window_s, metrics
        self.grace = min(window_s / 2, VOLUME_GRACE_S)
        self.judged = self.pending = -1.0  # start of the last window judged / waiting
        self.need: dict[Any, int] | None = None  # partition -> offset to reach
        self.stage = ""

    async def ready(self, now: float) -> bool:
        start = now - now % self.window_s - self.window_s
        if self.judged == start or now - (start + self.window_s) < self.grace:
            return False
        if self.pending != start:
            if self.pending >= 0 and self.judged != self.pending:
                self.metrics.volume_skipped.inc()
                log.info("live signals: the volume of the window from %s was not judged: this worker stayed behind "
                         "its topics until the next window ended",
                         datetime.fromtimestamp(self.pending, timezone.utc).isoformat(timespec="seconds"))
            self.pending, self.need, self.stage = start, None, "sources"
        if self.need is None:
            self.need = await self._ends(self.sources if self.stage == "sources" else {self.routed})
        end = start + self.window_s
        if self.need is None or not await self._reached(self.need, end):
            return False
        if self.stage == "sources":
            self.stage, self.need = "routed", await self._ends({self.routed})
            if self.need is None or not await self._reached(self.need, end):
                return False
        self.judged = start
        return True

    async def _ends(self, topics: set[str]) -> dict[Any, int] | None:
        # only these topics: the table's changelog is assigned too, and never read after recovery
        tps = {tp for tp in self.app.consumer.assignment() if tp.topic in topics}
        return {tp: end or 0 for tp, end in (await self.app.consumer.highwaters(*tps)).items()} if tps else None

    async def _reached(self, need: Mapping[Any, int], window_end: float) -> bool:
        owned = self.app.consumer.assignment()
        for tp, offset in need.items():
            if tp not in owned:  # revoked since: its new owner judges what it reads
                continue
            at, last = self.done.get(tp, (None, 0.0))
            if last >= window_end:
                continue
            if at is None:  # nothing processed there since it was assigned
                at = await self.app.consumer.position(tp) or 0
            if at < offset:
                return False
        return True


# --------------------------------------------------------------------------------------------------- parsing


def is_error(ev: Mapping[str, Any]) -> bool:
    meta = ev.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    for m in (meta if isinstance(meta, dict) else {}, ev):
        if m.get("error") or str(m.get("status", "")).lower() == "error":
            return True
    return not ev.get("output")


def produced_at(stamp: float | None, now: float) -> float:
    """The record's Kafka timestamp (seconds), or `now` when it has none or is ahead of this clock."""
    return stamp if stamp and 0 < stamp <= now else now


def segment_of(ev: Mapping[str, Any]) -> str:
    return f"app={ev.get('app')},model_version={ev.get('model_version') or ev.get('model')}"


# --------------------------------------------------------------------------------------------------- faust app


def make_app(settings: Settings, sig: SignalSettings, alerts: AlertSettings, outbox: Outbox,
             metrics: SignalMetrics | None = None, **faust_options: Any) -> Any:
    """The faust app (not started): alerts go to `outbox`, whose due rows it delivers with `alerts`' webhook.
    It counts into `metrics` (its own `SignalMetrics` if not given: `app.flywheel_metrics`). `faust_options`
    override faust settings (tests shorten timeouts)."""
    import faust

    metrics = metrics or SignalMetrics()

    sender = SlackSender(outbox, alerts)
    datadir = settings.home / "faust" / sig.group  # faust's default is a directory in the working directory
    datadir.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = dict(
        broker=[f"kafka://{h}" for h in settings.kafka_bootstrap.split(",")], store="memory://",
        broker_credentials=faust_credentials(settings),
        topic_partitions=settings.partitions, web_enabled=False, consumer_auto_offset_reset="latest",
        table_cleanup_interval=max(sig.window_s, 1.0), broker_session_timeout=10, broker_heartbeat_interval=1,
        broker_rebalance_timeout=10, producer_linger_ms=5,
        datadir=str(datadir),
    )
    options.update(faust_options)
    app = faust.App(sig.group, **options)
    sources = app.topic(settings.inference_topic, settings.feedback_topic, value_serializer="raw",
                        key_serializer="raw")
    routed = app.topic(f"{sig.group}-by-segment", internal=True,
                       key_serializer="raw", value_serializer="json", partitions=settings.partitions)
    # Expiry runs on this worker's clock, so a worker behind by more than the windows it keeps would find the
    # baseline of the window it is filling gone: keep ten more minutes of windows (a few ints each per segment).
    keep = int(sig.baseline_windows + 3) * sig.window_s + BEHIND_KEEP_S
    # Windows follow the time the app produced each record (its Kafka timestamp, not the event's own `timestamp`
    # field: live signals are about now, not about late events), carried explicitly onto the routed record (an
    # unstamped internal record reads back with timestamp 0 on the embedded broker). Not the time this worker read
    # it: a worker that stalls and catches up would count its backlog in the window it caught up in and leave the
    # stalled window nearly empty, a volume "drop" that never happened (seen in CI: 433/window -> 1/window).
    table = app.Table("signals", default=empty, partitions=settings.partitions).tumbling(
        sig.window_s, expires=keep).relative_to_stream()
    recent: OrderedDict[str, str] = OrderedDict()
    waiting: OrderedDict[str, list[Any]] = OrderedDict()  # inference id -> [first seen, (down?, time)...]
    done: dict[Any, tuple[int, float]] = {}  # partition -> (next offset to process, last record's time): the gate
    segments: set[str] = set()
    first_seen: dict[str, float] = {}  # windows that began before a segment was first counted are partial
    # segment -> produce time of the latest record counted: a worker that is behind judges rates in the window it is
    # filling, not in the wall clock's (empty until it catches up, so a lag of a window would hide every change)
    counted_to: dict[str, float] = {}
    detector = SignalDetector(sig)

    def inferences_read_to() -> float:
        """Produce time up to which this worker has read every inference partition it has read from."""
        return min((last for tp, (_, last) in done.items() if tp.topic == settings.inference_topic), default=0.0)

    @app.agent(sources)
    async def route(stream: Any) -> None:
        async for event in stream.events():
            metrics.events.labels(event.message.topic).inc()
            now = time.time()
            at = produced_at(event.message.timestamp, now)
            done[event.message.tp] = (event.message.offset + 1, at)  # read, even when there is nothing to count
            try:
                ev = json.loads(event.value)
            except (ValueError, TypeError):
                continue  # the landing worker quarantines it; nothing to count here
            if not isinstance(ev, dict):
                continue
            if event.message.topic == settings.inference_topic:
                seg = segment_of(ev)
                iid = str(ev.get("inference_id"))
                recent[iid] = seg
                if len(recent) > sig.max_tracked:
                    recent.popitem(last=False)
                try:
                    latency = float(ev.get("latency_ms") or 0.0)
                except (TypeError, ValueError):
                    latency = 0.0
                await routed.send(key=seg.encode(), value={"k": "i", "e": is_error(ev), "l": latency}, timestamp=at)
                for down, when in (waiting.pop(iid)[1:] if iid in waiting else ()):
                    await routed.send(key=seg.encode(), value={"k": "t", "d": down}, timestamp=when)
            elif ev.get("kind") == "thumbs" and ev.get("value") in (1, -1, 1.0, -1.0):
                iid = str(ev.get("inference_id"))
                down = ev.get("value") in (-1, -1.0)
                if iid in recent:
                    await routed.send(key=recent[iid].encode(), value={"k": "t", "d": down}, timestamp=at)
                else:
                    # The two topics are read independently, so feedback can overtake its inference: wait a bit.
                    waiting.setdefault(iid, [now]).append((down, at))
            while waiting:
                iid, entry = next(iter(waiting.items()))
                if len(waiting) <= sig.max_tracked and (
                        now - entry[0] < FEEDBACK_WAIT_S
                        # A worker that is behind reads feedback (small records, more per fetch) far ahead of the
                        # inferences: while those it reads are older than the thumbs, the inference may still come.
                        or (now - entry[0] < FEEDBACK_WAIT_MAX_S and inferences_read_to() < entry[1][1])):
                    break
                waiting.pop(iid)
                for down, when in entry[1:]:
                    await routed.send(key=b"unattributed", value={"k": "t", "d": down}, timestamp=when)

    @app.agent(routed)
    async def count(stream: Any) -> None:
        async for event in stream.events():
            done[event.message.tp] = (event.message.offset + 1, event.message.timestamp or 0.0)
            seg = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            rec = event.value
            if seg not in segments:
                segments.add(seg)
                first_seen[seg] = time.time()
            counted_to[seg] = max(counted_to.get(seg, 0.0), event.message.timestamp or 0.0)
            w = list(table[seg].current())
            if rec.get("k") == "i":
                w[N] += 1
                w[ERRORS] += bool(rec.get("e"))
                w[HIST + latency_bucket(float(rec.get("l") or 0.0))] += 1
            else:
                w[THUMBS] += 1
                w[DOWNS] += bool(rec.get("d"))
            table[seg] = w

    def window_values(seg: str, now: float) -> tuple[list[int], list[list[int]], tuple[float, float]]:
        underlying = table.table
        assert underlying.window is not None  # a tumbling table has one
        size = sig.window_s
        start = now - now % size
        rng = underlying.window.ranges(start + size / 2)[0]
        def read(r: Any) -> list[int]:
            # `in` first: reading a missing key would create it (faust's default factory) and write a changelog
            return list(underlying[(seg, r)]) if (seg, r) in underlying else empty()

        cur = read(rng)
        base = [read(underlying.window.ranges(start - k * size + size / 2)[0])
                for k in range(1, sig.baseline_windows + 1)]
        return cur, base, (start, start + size)

    async def check() -> None:
        with metrics.checks.time():
            await judge()

    gate = VolumeGate(app, (settings.inference_topic, settings.feedback_topic),
                      routed.get_topic_name(), done, sig.window_s, metrics)

    async def judge() -> None:
        now = datetime.now(timezone.utc).timestamp()
        judged = [seg for seg in sorted(segments) if seg != "unattributed"]
        at = {seg: min(now, counted_to.get(seg, now)) for seg in judged}
        rates = {seg: detector.evaluate(*window_values(seg, at[seg])[:2]) for seg in judged}
        await raise_alerts(rates, at)
        # Volume after the rates have gone out: the gate asks the broker for its ends (a second under load here),
        # and a rate alert must not wait for that. Only a complete window is judged: the one that just ended.
        if not await gate.ready(now):
            return
        volume = {}
        for seg in judged:
            prev, prev_base, (ps, _) = window_values(seg, now - sig.window_s)
            if ps - sig.window_s * sig.baseline_windows >= first_seen.get(seg, now):
                volume[seg] = [s for s in detector.evaluate(prev, prev_base, current_complete=True)
                               if s.signal == "volume"]
        await raise_alerts(volume, {seg: now for seg in volume})

    async def raise_alerts(found: Mapping[str, Sequence[Signal]], at: Mapping[str, float]) -> None:
        """Hand each segment's signals to the outbox, labelled with the window of its time in `at`, and deliver
        what is due."""
        queued = False
        for seg, signals in found.items():
            ws = at[seg] - at[seg] % sig.window_s
            label = (f"{datetime.fromtimestamp(ws, timezone.utc).isoformat(timespec='seconds')}/"
                     f"{datetime.fromtimestamp(ws + sig.window_s, timezone.utc).isoformat(timespec='seconds')}")
            for s in signals:
                alert = Alert(f"live:{s.signal}", seg, label,
                              (AlertItem(s.signal, s.before, s.after, s.method, round(s.score, 4), s.threshold),),
                              title=f"Live signal: {s.signal.replace('_', ' ')} moved on {seg}")
                _, status = await asyncio.to_thread(outbox.enqueue, alert)
                queued = queued or status == "pending"
                if status == "pending":
                    metrics.alerts.labels(s.signal).inc()
                    log.warning("live signal %s on %s: %s -> %s", s.signal, seg, s.before, s.after)
        depth = await asyncio.to_thread(outbox.pending)
        if queued or depth:
            await asyncio.to_thread(sender.deliver)
            depth = await asyncio.to_thread(outbox.pending)
        metrics.outbox_depth.set(depth)

    @app.timer(interval=sig.check_interval_s)
    async def checker() -> None:
        try:
            await check()
        except Exception:  # a failing check must not stop the worker; the next tick tries again
            log.exception("live-signal check failed")

    app.flywheel_check = check  # type: ignore[attr-defined]  # for tests and `flywheel signals --once`
    app.flywheel_metrics = metrics  # type: ignore[attr-defined]
    return app
