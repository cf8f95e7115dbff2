"""Steady live traffic for the live-signal tests: inferences with one thumbs each, at a rate of wall-clock time.

Each turn sends what is due since the start (or since the last resume), in one batch, so a turn that a loaded
machine delays is made up by the next one: the rate a test claims is the rate the broker got.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Producer

from flywheel.config import Settings
from flywheel.infra.testing.scenarios import all_answers


async def joined(app: Any, over: str = "") -> None:
    """Wait (at most 60 s) until the faust `app` holds partitions: traffic sent before is not read ("latest")."""
    deadline = time.monotonic() + 60
    while not app.consumer.assignment() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert app.consumer.assignment(), f"the signals worker never joined its group{over}"


class SteadyTraffic:
    """`rate` inferences of app `app`, model version `model_version`, per second, each with a thumbs that is down
    with probability `down` (changeable while it runs; a fixed pseudo-random sequence). `pause()` stops sending
    (the app went quiet), `resume()` starts again without a burst of what the pause did not send."""

    def __init__(self, settings: Settings, rate: int, *, down: float = 0.2, app: str = "support-bot",
                 model_version: str = "v2") -> None:
        self.settings, self.rate, self.down = settings, rate, down
        self.app, self.model_version = app, model_version
        self.sent = self.due = 0
        self._stop = self._paused = False
        self._base = 0  # inferences counted as due before the current run of sending
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SteadyTraffic":
        self._thread.start()
        return self

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._base, self._started = self.sent, time.monotonic()
        self._paused = False

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)

    def _run(self) -> None:
        answers = all_answers()
        s = self.settings
        p = Producer({"bootstrap.servers": s.kafka_bootstrap, "linger.ms": 5})
        rng_state = 0
        self._started = time.monotonic()
        while not self._stop:
            if not self._paused:
                due = self._base + int((time.monotonic() - self._started) * self.rate)
                while self.sent < due:
                    self.sent += 1
                    iid = f"i{self.sent}"
                    now = datetime.now(timezone.utc).isoformat()
                    prompt, output = answers[self.sent % len(answers)]
                    inf = {"inference_id": iid, "timestamp": now, "app": self.app, "model": "m",
                           "model_version": self.model_version, "input": prompt, "output": output,
                           "latency_ms": 400}
                    p.produce(s.inference_topic, json.dumps(inf).encode(), key=iid.encode())
                    rng_state = (rng_state * 1103515245 + 12345) % 2**31
                    fb = {"feedback_id": f"f{self.sent}", "inference_id": iid, "timestamp": now, "kind": "thumbs",
                          "value": -1 if (rng_state / 2**31) < self.down else 1}
                    p.produce(s.feedback_topic, json.dumps(fb).encode(), key=iid.encode())
                self.due = due
            p.poll(0)
            time.sleep(0.05)
        p.flush(10)
