"""The SDK validates at the edge, with every reason in the error; it never takes the application down when the
broker is away (it buffers within a budget and delivers later), and it reports every event it could not deliver."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable, ContractViolation
from flywheel.infra import broker as embedded
from flywheel.infra.broker import free_port
from flywheel.streams.client import FlywheelClient, UndeliveredEvents, encode
from flywheel.streams.topics import ensure_topics

from .conftest import read_topic

# A log_* call never waits on the network. Generous for a loaded 2-core machine (single calls stalled 0.2-0.4 s
# there while other processes ran), and still far below the 10 s the old constructor and send() could block.
BOUND_S = 1.0


def _no_broker(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", broker_port=free_port(), topic_prefix=f"t{uuid.uuid4().hex[:8]}",
                    partitions=1)


def _log(fw: FlywheelClient, n: int, output: str = "o") -> tuple[list[str], float]:
    """Log n inferences; returns their ids and the slowest call's duration."""
    ids, slowest = [], 0.0
    for _ in range(n):
        t = time.perf_counter()
        ids.append(fw.log_inference(app="a", model="m", input="q", output=output))
        slowest = max(slowest, time.perf_counter() - t)
    return ids, slowest


def test_invalid_calls_raise_with_every_reason(kafka_settings: Settings) -> None:
    with FlywheelClient(kafka_settings) as fw:
        with pytest.raises(ContractViolation) as err:
            fw.log_inference(app="a", model="m", input=[], output="o", latency_ms=-3)
        assert err.value.reasons == [
            "`input` must be a string or a non-empty list of {role, content} messages", "`latency_ms` must be >= 0"]
        with pytest.raises(ContractViolation, match="thumbs feedback needs value 1 or -1"):
            fw.log_feedback(inference_id="x", kind="thumbs", value=5)
        with pytest.raises(ContractViolation, match="timezone-aware"):
            fw.log_inference(app="a", model="m", input="q", output="o", timestamp=datetime(2026, 1, 1))
        iid = fw.log_inference(app="a", model="m", input="q", output="o")
        assert len(iid) == 36
        fw.flush()


def test_no_broker_is_a_clear_error_in_strict_mode(tmp_path) -> None:
    with pytest.raises(BrokerUnavailable, match="flywheel broker start"):
        FlywheelClient(Settings(home=tmp_path, broker_port=free_port()), strict=True, max_block_ms=1000,
                       bootstrap_timeout_ms=1000)


def test_a_client_started_before_the_broker_delivers_once_it_comes(tmp_path: Path) -> None:
    s = _no_broker(tmp_path)
    t = time.perf_counter()
    fw = FlywheelClient(s, bootstrap_timeout_ms=1000)
    assert time.perf_counter() - t < BOUND_S
    broker = Settings(home=tmp_path / "broker", broker_port=s.broker_port)
    try:
        ids, slowest = _log(fw, 50)
        assert slowest < BOUND_S
        st = fw.stats
        assert (st.sent, st.buffered, st.delivered, st.dropped) == (50, 50, 0, 0)
        embedded.start(broker)
        ensure_topics(s)
        fw.flush(timeout=60)
        assert fw.stats.delivered == 50 and fw.stats.buffered == 0
        landed = [json.loads(m.value())["inference_id"] for m in read_topic(s, s.inference_topic, 1)]
        assert sorted(landed) == sorted(ids)
        fw.close()
    finally:
        embedded.stop(broker)


def test_over_budget_events_are_dropped_counted_and_reported(tmp_path: Path) -> None:
    s = _no_broker(tmp_path)
    fw = FlywheelClient(s, buffer_bytes=20_000, close_timeout_s=0.5, bootstrap_timeout_ms=1000)
    _, slowest = _log(fw, 100, output="x" * 1000)  # ~1.1 KB each: about 18 fit
    assert slowest < BOUND_S
    st = fw.stats
    assert st.buffered_bytes <= 20_000 and st.buffered + st.dropped == 100 and 10 < st.buffered < 20
    with pytest.raises(UndeliveredEvents) as err:
        fw.close()
    e = err.value
    assert e.count == 100 and e.dropped == 100 and e.failed == 0
    assert e.topics == (s.inference_topic,)
    assert "buffer" in str(e.first_error) and "100 events" in str(e)


def test_a_full_buffer_blocks_the_caller_at_most_block_ms(tmp_path: Path) -> None:
    s = _no_broker(tmp_path)
    fw = FlywheelClient(s, buffer_bytes=2_000, block_ms=300, close_timeout_s=0.2, bootstrap_timeout_ms=1000)
    _log(fw, 1, output="x" * 1000)
    _, slowest = _log(fw, 3, output="x" * 1000)
    assert 0.25 < slowest < 0.3 + BOUND_S
    assert fw.stats.dropped == 3
    with pytest.raises(UndeliveredEvents):
        fw.close()


def test_with_raises_and_close_reports_when_events_cannot_be_delivered(tmp_path: Path) -> None:
    s = _no_broker(tmp_path)
    with pytest.raises(UndeliveredEvents) as err:
        with FlywheelClient(s, close_timeout_s=0.5, bootstrap_timeout_ms=1000) as fw:
            _log(fw, 3)
            fw.log_feedback(inference_id="i", kind="thumbs", value=1)
    e = err.value
    assert e.count == 4 and e.topics == (s.feedback_topic, s.inference_topic)
    assert s.kafka_bootstrap in str(e) and s.kafka_bootstrap in str(e.first_error)


def test_a_kafka_error_reaches_the_end_of_the_with_block(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    with pytest.raises(UndeliveredEvents) as err:
        with FlywheelClient(kafka_settings) as fw:
            fw.log_inference(app="a", model="m", input="q", output="o")
            fw.send_raw(kafka_settings.inference_topic, b"x" * (9 * 1024 * 1024))  # over max_request_size
    assert err.value.failed == 1 and err.value.count == 1 and "MessageSizeTooLarge" in repr(err.value.first_error)
    assert err.value.topics == (kafka_settings.inference_topic,)


def test_the_exit_hook_reports_undelivered_events(tmp_path: Path) -> None:
    s = _no_broker(tmp_path)
    script = (f"from flywheel.config import Settings\nfrom flywheel.streams.client import FlywheelClient\n"
              f"fw = FlywheelClient(Settings(broker_port={s.broker_port}, topic_prefix='exit'), close_timeout_s=1,"
              f" bootstrap_timeout_ms=1000)\n"
              f"for _ in range(2): fw.log_inference(app='a', model='m', input='q', output='o')\nprint('done')\n")
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 20
    assert res.returncode == 0 and res.stdout == "done\n", res.stderr
    assert "2 events" in res.stderr and "exit.inference" in res.stderr and "at exit" in res.stderr, res.stderr


def test_encoding_is_compact_utf8() -> None:
    assert encode({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()


def test_strict_mode_raises_at_the_call(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    with FlywheelClient(kafka_settings, strict=True, buffer_bytes=5_000) as small:
        with pytest.raises(UndeliveredEvents, match="buffer"):
            small.log_inference(app="a", model="m", input="q", output="x" * 6_000)
    fw = FlywheelClient(kafka_settings, strict=True)
    fw.send_raw(kafka_settings.inference_topic, b"x" * (9 * 1024 * 1024))  # fits no request: kafka-python refuses
    deadline = time.monotonic() + 10
    while fw.stats.failed == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(UndeliveredEvents) as err:  # the next call reports it
        fw.log_inference(app="a", model="m", input="q", output="o")
    assert err.value.failed == 1
    fw.log_inference(app="a", model="m", input="q", output="o")  # reported once, then the client goes on
    fw.close()
    assert fw.stats.delivered == 1


def test_a_client_whose_thread_connects_before_the_constructor_returns_delivers(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's thread may connect and run on before the constructor's next line (it did on a loaded machine:
    its first step read an attribute the constructor had not set yet, the thread died, and close() reported
    every event undelivered). Here the constructor waits for its thread to have run that far."""
    ensure_topics(kafka_settings)
    start = threading.Thread.start

    def start_then_let_it_run(self: threading.Thread) -> None:
        start(self)
        if self.name == "flywheel-sdk":
            self.join(0.5)  # it waits for events from here on: the constructor goes on after half a second

    monkeypatch.setattr(threading.Thread, "start", start_then_let_it_run)
    with FlywheelClient(kafka_settings, strict=True) as fw:  # strict: connected in the constructor
        ids, _ = _log(fw, 5)
        assert fw._pump.is_alive()
    landed = {json.loads(m.value())["inference_id"] for m in read_topic(kafka_settings, kafka_settings.inference_topic,
                                                                       kafka_settings.partitions)}
    assert landed == set(ids)


def test_the_exit_hook_delivers_what_is_buffered(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    s = kafka_settings
    script = (f"from flywheel.config import Settings\nfrom flywheel.streams.client import FlywheelClient\n"
              f"fw = FlywheelClient(Settings(broker_port={s.broker_port}, topic_prefix='{s.topic_prefix}'))\n"
              f"for i in range(200): fw.log_inference(inference_id=f'i{{i}}', app='a', model='m', input='q', "
              f"output='o')\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "not delivered" not in res.stderr, res.stderr
    landed = {json.loads(m.value())["inference_id"] for m in read_topic(s, s.inference_topic, s.partitions)}
    assert landed == {f"i{i}" for i in range(200)}


def test_a_misspelt_producer_option_fails_in_the_constructor(tmp_path: Path) -> None:
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match="linger_msec"):
        FlywheelClient(_no_broker(tmp_path), linger_msec=5)


def test_an_inference_and_its_feedback_share_a_partition_keyed_by_inference_id(kafka_settings: Settings) -> None:
    """Ordering (README, Reliability): Kafka orders within a partition only, so the SDK keys every event by its
    inference's id, which puts an inference and all its feedback on the same partition number of their topics."""
    s = kafka_settings.replace(partitions=4)
    ensure_topics(s)
    with FlywheelClient(s) as fw:
        ids = [fw.log_inference(app="a", model="m", input="q", output="o") for _ in range(40)]
        for iid in ids:
            fw.log_feedback(inference_id=iid, kind="thumbs", value=1)
            fw.log_feedback(inference_id=iid, kind="thumbs", value=-1)
    inferences = {m.key().decode(): m.partition() for m in read_topic(s, s.inference_topic, 4)}
    feedback = read_topic(s, s.feedback_topic, 4)
    assert set(inferences) == set(ids) and len(feedback) == 80
    assert len(set(inferences.values())) > 1, "40 keys all on one partition: the keying is not exercised"
    for m in feedback:
        assert json.loads(m.value())["inference_id"] == m.key().decode()
        assert m.partition() == inferences[m.key().decode()]
