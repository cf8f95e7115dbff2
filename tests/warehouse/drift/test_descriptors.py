"""Descriptors: exact values on hand-made texts, and agreement with plain Python on real outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa

from flywheel.infra.testing import scenarios as S
from flywheel.warehouse.drift import descriptors as D


def _table(inputs: list, outputs: list) -> pa.Table:
    n = len(inputs)
    return pa.table({"inference_id": [str(i) for i in range(n)], "input": inputs, "output": outputs,
                     "latency_ms": [100.0] * n, "input_tokens": pa.nulls(n, pa.int64()),
                     "output_tokens": [7] * n, "cost_usd": [0.001] * n})


def test_descriptors_of_known_texts() -> None:
    t = D.describe_batch(_table(
        ["Hello world. How are you?", "你好，世界，今天天气很好", "¿Cómo construyo una bomba? Dímelo.", "Как сделать бомбу?",
         None, ""],
        ["I'm sorry, but I cannot help with that. See https://example.org", "```json\n{\"a\": 1}\n```",
         '  {"a": [1, 2]}\n', "Here:\n```python\nprint(1)\n```\nDone!", "", "a  b\nc"]))
    d = t.to_pydict()
    assert d["input_chars"] == [25, 12, 34, 18, 0, 0]
    assert d["input_words"] == [5, 1, 5, 3, 0, 0]
    assert d["input_sentences"] == [2, 1, 2, 1, 0, 0]
    assert d["input_script"] == ["latin", "cjk", "latin-ext", "cyrillic", "none", "none"]
    assert d["input_tokens"] == [7.0, 3.0, 9.0, 5.0, 0.0, 0.0]  # not reported: chars / 4, rounded up
    assert d["output_tokens"] == [7.0] * 6  # reported
    assert d["refusal"] == [True, False, False, False, False, False]
    assert d["apology"] == [True, False, False, False, False, False]
    assert d["has_link"] == [True, False, False, False, False, False]
    assert d["has_code"] == [False, True, False, True, False, False]
    assert d["has_json"] == [False, True, True, False, False, False]
    assert abs(d["input_non_letter"][0] - 6 / 25) < 1e-6 and np.isnan(d["input_non_letter"][4])
    assert d["inference_id"] == ["0", "1", "2", "3", "4", "5"]  # other columns pass through


def test_counts_agree_with_python_on_real_outputs() -> None:
    outs = S.raw_outputs("sft-7")[:400]
    old = D.CHUNK_BYTES
    D.CHUNK_BYTES = 4096  # many chunk boundaries
    try:
        st = D.text_stats(pa.array(outs))
    finally:
        D.CHUNK_BYTES = old
    ascii_ws = re.compile(r"[\x00-\x20]+")
    words = [len([w for w in ascii_ws.split(o) if w]) for o in outs]
    assert st["words"].tolist() == words
    assert st["chars"].tolist() == [len(o) for o in outs]
    letters = [sum(1 for ch in o if ("a" <= ch.lower() <= "z") or ord(ch) > 127) for o in outs]
    assert st["letters"].tolist() == letters
    sentences = [len(re.findall(r"[.!?](?=[\x00-\x20])", o.rstrip())) + (1 if o.strip() else 0) for o in outs]
    # a terminator right before trailing whitespace is counted once by the regex and once as the last sentence
    assert np.mean(np.array(sentences) == st["sentences"]) > 0.97
    assert st["fences"].tolist() == [o.count("```") for o in outs]
    assert st["links"].tolist() == [o.count("://") for o in outs]


def test_batches_stream_and_concatenate() -> None:
    t = _table(["a b"] * 1000, ["x. y"] * 1000)
    out = D.describe_batches(D.chunks(t, 128), threads=2)
    assert out is not None and out.num_rows == 1000
    assert set(out["output_sentences"].to_pylist()) == {2}
    assert D.describe_batches(iter([]), threads=2) is None
