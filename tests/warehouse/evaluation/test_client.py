"""The chat client against the provider double on 127.0.0.1, which misbehaves on purpose: every request ends with
an answer or its error, once, and the key never leaks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
from flywheel.warehouse.evaluation.client import ChatClient, ChatRequest, RetryPolicy
from flywheel.warehouse.evaluation.targets import Secret, Target, TargetError, load_targets, resolve_key

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.2)


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    return [{"model": r["model"], "prompt": r["prompt"], "output": r["output"]} for r in rows if r["kind"] == "answers"]


@pytest.fixture
def provider(records: list[dict[str, str]]) -> Iterator[RecordedProvider]:
    with RecordedProvider.from_records(records, slow_s=1.0) as p:
        yield p


def _requests(records: list[dict[str, str]], model: str) -> list[ChatRequest]:
    prompts = sorted({r["prompt"] for r in records if r["model"] == model})
    return [ChatRequest((("user", p),)) for p in prompts]


def test_every_request_ends_answered_or_failed_once_through_misbehaviour(
        provider: RecordedProvider, records: list[dict[str, str]]) -> None:
    model = records[0]["model"]
    reqs = _requests(records, model)
    assert len(reqs) >= 20
    provider.script = [(429, {"Retry-After": "0.05"}), (500, {}), "malformed", "reset", (503, {})] * 3 + ["slow"]
    target = Target("t", provider.url, model, timeout_s=0.5, price_per_1k_input_usd=1.0, price_per_1k_output_usd=2.0)
    seen: list[int] = []
    lock = threading.Lock()

    def done(i: int, _c: object) -> None:
        with lock:
            seen.append(i)

    # Enough attempts that no request can meet every scripted failure (16) on its own.
    patient = RetryPolicy(attempts=20, backoff_s=0.01, max_backoff_s=0.2)
    out = ChatClient(target, Secret("sk-test-SECRET"), concurrency=4, retry=patient).complete_all(reqs, done)
    assert sorted(seen) == list(range(len(reqs)))  # each reported once
    assert len(out) == len(reqs) and all(c.ok for c in out), [c.error for c in out if not c.ok]
    assert sum(c.attempts for c in out) == len(reqs) + 16  # each scripted failure cost one retry, none lost
    by_prompt = {}
    for r in records:
        by_prompt.setdefault((r["model"], " ".join(r["prompt"].split())), set()).add(r["output"])
    for req, c in zip(reqs, out):
        assert c.output in by_prompt[(model, " ".join(req.messages[0][1].split()))]
        assert c.cost_usd is not None and c.cost_usd > 0 and c.latency_ms > 0


def test_a_request_that_keeps_failing_is_recorded_with_its_error(provider: RecordedProvider,
                                                                   records: list[dict[str, str]]) -> None:
    target = Target("t", provider.url, records[0]["model"], timeout_s=2)
    provider.script = [(500, {})] * 4
    (c,) = ChatClient(target, Secret(""), retry=FAST).complete_all(_requests(records, records[0]["model"])[:1])
    assert not c.ok and c.output is None and c.attempts == 4 and c.error.startswith("HTTP 500")
    (gone,) = ChatClient(Target("t", provider.url, "no-such-model"), Secret(""), retry=FAST).complete_all(
        [ChatRequest((("user", "hi"),))])
    assert gone.error.startswith("HTTP 404") and gone.attempts == 1  # not retryable


def test_concurrency_is_bounded(provider: RecordedProvider, records: list[dict[str, str]]) -> None:
    model = records[0]["model"]
    provider.delay_s = 0.1
    t0 = time.perf_counter()
    out = ChatClient(Target("t", provider.url, model), Secret(""), concurrency=4).complete_all(
        _requests(records, model)[:12])
    elapsed = time.perf_counter() - t0
    assert all(c.ok for c in out)
    assert elapsed >= 0.3  # 12 requests of 0.1 s, 4 at a time: at least 3 rounds


def test_targets_file_is_validated_and_the_key_comes_from_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "targets.yaml"
    f.write_text("targets:\n  cand:\n    base_url: http://127.0.0.1:9/v1\n    model: m\n    api_key_env: FW_KEY\n"
                 "    params: {temperature: 0}\n")
    (t,) = load_targets(f).values()
    assert (t.name, t.model, t.params) == ("cand", "m", {"temperature": 0})
    assert repr(resolve_key(t, {"FW_KEY": "sk-abc"})) == "Secret('***')"
    assert "sk-abc" not in json.dumps(t.describe())
    with pytest.raises(TargetError, match=r"\$FW_KEY, which is not set"):
        resolve_key(t, {})
    f.write_text("targets:\n  cand:\n    base_url: http://x/v1\n    model: m\n    temprature: 0\n")
    with pytest.raises(TargetError, match="unknown key `targets.cand.temprature`") as err:
        load_targets(f)
    assert err.value.file == str(f) and err.value.key == "targets.cand.temprature"
    f.write_text("targets:\n  cand:\n    base_url: x\n    model: m\n")
    with pytest.raises(TargetError, match="must be an http"):
        load_targets(f)
    f.write_text("targets:\n  cand:\n    base_url: http://x/v1\n    model: m\n    price_per_1k_input_usd: cheap\n")
    with pytest.raises(TargetError, match="non-negative number"):
        load_targets(f)


def test_cost_per_request_does_not_grow_with_concurrency(provider: RecordedProvider,
                                                         records: list[dict[str, str]]) -> None:
    """The client's CPU per request (its event loop's thread alone, not the provider's threads) at concurrency 32
    stays near its cost at 4: a cost growing with the requests in flight would make the harness, not the endpoint,
    the bottleneck of a run (bench/eval.py measures the rates)."""
    model = records[0]["model"]
    reqs = (_requests(records, model) * 40)[:600]
    target = Target("t", provider.url, model)

    def cost(concurrency: int, n: int = len(reqs)) -> float:
        t0 = time.thread_time()
        out = ChatClient(target, Secret(""), concurrency=concurrency).complete_all(reqs[:n])
        assert all(c.ok for c in out)
        return (time.thread_time() - t0) / n

    cost(32, 32)  # warm: imports, the first connections
    at4, at32 = min(cost(4), cost(4)), min(cost(32), cost(32))
    assert at32 < 1.4 * at4, f"{at32 * 1000:.2f} ms per request at concurrency 32, {at4 * 1000:.2f} ms at 4"
