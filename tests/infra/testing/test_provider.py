"""The provider test double answers like an OpenAI-compatible endpoint, with recorded real outputs, and misbehaves
exactly as scripted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider


@pytest.fixture
def provider() -> Iterator[RecordedProvider]:
    answers = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    records = [{"model": a["model"], "prompt": a["prompt"], "output": a["output"]} for a in answers
               if a["kind"] == "answers"]
    with RecordedProvider.from_records(records, slow_s=0.3) as p:
        p.records = records  # type: ignore[attr-defined]
        yield p


def _chat(p: RecordedProvider, model: str, prompt: str) -> httpx.Response:
    return httpx.post(f"{p.url}/chat/completions", timeout=5,
                      json={"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                                         {"role": "user", "content": prompt}]})


def test_answers_a_known_prompt_with_the_recorded_output(provider: RecordedProvider) -> None:
    rec = provider.records[0]  # type: ignore[attr-defined]
    res = _chat(provider, rec["model"], rec["prompt"])
    assert res.status_code == 200
    body = res.json()
    outputs = {r["output"] for r in provider.records if (r["model"], r["prompt"]) == (rec["model"], rec["prompt"])}  # type: ignore[attr-defined]
    assert body["choices"][0]["message"]["content"] in outputs
    assert body["usage"]["completion_tokens"] > 0 and body["model"] == rec["model"]
    again = _chat(provider, rec["model"], rec["prompt"]).json()
    assert {**again, "created": 0} == {**body, "created": 0}  # the same request, the same answer (but its time)
    missing = _chat(provider, rec["model"], "a prompt nobody recorded")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_scripted_misbehaviour_then_normal_answers(provider: RecordedProvider) -> None:
    rec = provider.records[0]  # type: ignore[attr-defined]
    provider.script = [(429, {"Retry-After": "1"}), (500, {}), "malformed", "reset", "slow"]
    first = _chat(provider, rec["model"], rec["prompt"])
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert _chat(provider, rec["model"], rec["prompt"]).status_code == 500
    broken = _chat(provider, rec["model"], rec["prompt"])
    assert broken.status_code == 200
    with pytest.raises(ValueError):
        broken.json()
    with pytest.raises(httpx.TransportError):
        _chat(provider, rec["model"], rec["prompt"])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{provider.url}/chat/completions", timeout=0.1,
                   json={"model": rec["model"], "messages": [{"role": "user", "content": rec["prompt"]}]})
    assert _chat(provider, rec["model"], rec["prompt"]).status_code == 200
    assert len(provider.requests) == 6


def test_a_fine_tune_job_runs_to_a_model_name(provider: RecordedProvider) -> None:
    # the Files API takes multipart/form-data; a raw body is refused, as the real API refuses it
    raw = httpx.post(f"{provider.url}/files", content=b'{"messages": []}\n', timeout=5)
    assert raw.status_code == 400
    file_id = httpx.post(f"{provider.url}/files", data={"purpose": "fine-tune"}, timeout=5,
                         files={"file": ("train.jsonl", b'{"messages": []}\n')}).json()["id"]
    assert provider.files[file_id] == b'{"messages": []}\n' and provider.filenames[file_id] == "train.jsonl"
    job = httpx.post(f"{provider.url}/fine_tuning/jobs", json={"model": "base-7b", "training_file": file_id},
                     timeout=5).json()
    assert job["status"] == "queued"
    polls = [httpx.get(f"{provider.url}/fine_tuning/jobs/{job['id']}", timeout=5).json() for _ in range(2)]
    assert [p["status"] for p in polls] == ["running", "succeeded"]
    assert polls[-1]["fine_tuned_model"] == f"ft:base-7b:flywheel:{job['id']}"
    bad = httpx.post(f"{provider.url}/fine_tuning/jobs", json={"model": "m", "training_file": "nope"}, timeout=5)
    assert bad.status_code == 400
