"""Scale-out under rebalancing (issue 14 item 4): one, then two, then three `flywheel ingest` processes share a
6-partition topic while events keep coming; one of them is SIGKILLed, the others drain. Every event must land
exactly once: in the raw tables one row per Kafka message, in the views every event id once.

On Tansu each join is a rebalance that takes seconds, and a killed member keeps its partitions until its session
expires (STACK-NOTES): the test waits for each worker to be given partitions before the next step, so every step is
a real hand-over and not a join that happened to come first.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.infra.testing.corpus import generate, load_corpus
from flywheel.warehouse.query import connect

from .conftest import Produced
from .test_drain_after_kills import _env
from .test_exactly_once import _landed

PARTITIONS = 6
RATE = 1_500
"""Events per second the producer sends while the group changes: well within one worker's rate, so that lag does
not hide a lost partition (its events would be missing at the end, not late)."""
ASSIGNED = re.compile(r"assigned \[(.*?)\], resuming at")
WORKER = """
import sys, time
from pathlib import Path
from flywheel.cli import main
import flywheel.streams.ingest  # imports are most of a worker's start (25 s on a loaded 2-core machine)
Path(sys.argv[1] + ".ready").touch()
while not Path(sys.argv[1] + ".go").exists():
    time.sleep(0.05)
main(["-v", "ingest", "--until-idle", "4"], prog_name="flywheel")
"""
"""`flywheel ingest`, started ahead and told when to join the group: each step of the test is then a join (a
rebalance of seconds) rather than a Python start (tens of seconds when the machine is busy)."""


class Steady:
    """A producer thread sending generated events at `RATE` until `stop()`; what it sent is in `produced`."""

    def __init__(self, settings: Settings) -> None:
        self.produced = Produced(settings)
        self._events = generate(load_corpus(), 10_000_000, seed=14, prefix="rb")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Steady:
        self._thread.start()
        return self

    def _run(self) -> None:
        start, sent = time.monotonic(), 0
        while not self._stop.is_set():
            for _ in range(100):
                self.produced.event(next(self._events))
            sent += 100
            self.produced.producer.poll(0)
            time.sleep(max(0.0, start + sent / RATE - time.monotonic()))
        self.produced.flush()

    def stop(self) -> None:
        """Stop sending and wait until everything sent is acknowledged (idempotent)."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(60)
            assert not self._thread.is_alive()

    @property
    def count(self) -> int:
        return sum(map(len, self.produced.valid.values()))


def _assignments(log: Path) -> list[set[tuple[str, int]]]:
    """Every assignment the worker logged, in order: the (topic, partition) pairs it was given."""
    out = []
    for m in ASSIGNED.finditer(log.read_text(errors="replace")):
        out.append({(t, int(p)) for t, p in re.findall(r"\('([^']+)', (\d+)\)", m.group(1))})
    return out


def _wait(what: str, cond: object, timeout: float, logs: list[Path]) -> float:
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.mark.reliability
def test_workers_added_and_killed_during_a_steady_stream_land_every_event_exactly_once(
        kafka_settings: Settings, tmp_path: Path) -> None:
    s = kafka_settings.replace(partitions=PARTITIONS)
    env = _env(s, FLYWHEEL_DRAIN_TIMEOUT_S="90")
    logs = [tmp_path / f"worker-{i}.log" for i in (1, 2, 3)]
    procs: list[subprocess.Popen[bytes]] = []
    for log in logs:
        with open(log, "wb") as fh:
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(log)], env=env, stdout=fh,
                                          stderr=subprocess.STDOUT))
    timeline: dict[str, float] = {}

    def start(i: int) -> None:
        Path(f"{logs[i]}.go").touch()

    def given(i: int, n: int) -> bool:  # worker i has logged at least n assignments, the last one not empty
        got = _assignments(logs[i])
        return len(got) >= n and bool(got[-1])

    steady = Steady(s)
    try:
        _wait("the workers to start", lambda: all(Path(f"{p}.ready").exists() for p in logs), 120, logs)
        t0 = time.monotonic()
        steady.start()
        start(0)
        _wait("worker 1 to land", lambda: _landed(s) > 0, 90, logs)
        timeline["worker 1 landing"] = time.monotonic() - t0
        # Worker 2 joins: worker 1 must give up partitions (its second assignment is smaller).
        start(1)
        _wait("worker 2 to be given partitions", lambda: given(1, 1) and given(0, 2), 90, logs)
        timeline["worker 2 assigned"] = time.monotonic() - t0
        time.sleep(3)
        start(2)
        _wait("worker 3 to be given partitions", lambda: given(2, 1), 90, logs)
        timeline["worker 3 assigned"] = time.monotonic() - t0
        time.sleep(3)
        # SIGKILL the worker that was there first: its partitions (and whatever it held unlanded) go to the others
        # once its session expires.
        before_kill = _landed(s)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        timeline["worker 1 killed"] = time.monotonic() - t0
        owned_at_kill = _assignments(logs[0])[-1]
        _wait("the survivors to take worker 1's partitions over",
              lambda: owned_at_kill <= _assignments(logs[1])[-1] | _assignments(logs[2])[-1], 90, logs)
        timeline["worker 1's partitions taken over"] = time.monotonic() - t0
        time.sleep(3)
        steady.stop()
        timeline["producer stopped"] = time.monotonic() - t0
        rcs = [p.wait(150) for p in procs[1:]]
        timeline["drained"] = time.monotonic() - t0
    finally:
        steady.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)
    assert rcs == [0, 0], tails

    produced = steady.produced.valid
    expect_inf = {e["inference_id"] for e in produced["inference"]}
    expect_fb = {e["feedback_id"] for e in produced["feedback"]}
    q = connect(s).execute
    # Raw tables: one row per Kafka message, no message twice, none missing.
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_inferences").fetchone() == (
        len(expect_inf), len(expect_inf)), tails
    assert q("SELECT count(*), count(DISTINCT (_topic, _partition, _offset)) FROM lake_feedback").fetchone() == (
        len(expect_fb), len(expect_fb)), tails
    assert q("SELECT count(*) FROM lake_quarantine").fetchone() == (0,), tails
    # Event ids: each exactly once in the raw tables too (a duplicate would be hidden by the views' dedupe).
    assert q("SELECT count(DISTINCT inference_id) FROM lake_inferences").fetchone() == (len(expect_inf),)
    assert {r[0] for r in q("SELECT inference_id FROM inferences").fetchall()} == expect_inf
    assert {r[0] for r in q("SELECT feedback_id FROM feedback").fetchall()} == expect_fb
    # Every partition of both topics was landed, and each worker owned some at some point.
    parts = q("SELECT _topic, count(DISTINCT _partition) FROM lake_inferences GROUP BY ALL UNION ALL "
              "SELECT _topic, count(DISTINCT _partition) FROM lake_feedback GROUP BY ALL").fetchall()
    assert sorted(n for _, n in parts) == [PARTITIONS, PARTITIONS], parts
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    print(json.dumps({"events": steady.count, "landed_before_kill": before_kill,
                      "assignments_per_worker": [len(_assignments(p)) for p in logs],
                      "replay_warnings": text.count("as replays"),
                      "timeline_s": {k: round(v, 1) for k, v in timeline.items()}}))
