"""The fast path changes the speed, never the verdict: with and without it the batch validator returns the same
typed rows and reasons, on valid, hostile and tricky input, alone or mixed."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from flywheel.infra.testing.corpus import generate, hostile_payloads, load_corpus
from flywheel.infra.testing.tool_calls import bad_shapes, tool_inferences
from flywheel.schemas.contract import EVENT_TYPES, event_type_of
from flywheel.schemas.validation import BatchValidator

LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(generate(load_corpus(), 600, seed=5))


def _valid(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if event_type_of(e) is EVENT_TYPES[name]]


def _tricky(e: dict) -> list[bytes]:
    """Payloads that are valid, or nearly, in ways a strict reader could get wrong."""
    enc = lambda o, **kw: json.dumps(o, **kw).encode()  # noqa: E731
    id_field = "inference_id" if "output" in e else "feedback_id"
    out = [
        enc(e, indent=2),  # raw newlines between tokens
        enc(e, separators=(",", ":")),  # compact
        enc(e)[:-1] + b' }',
        b"  " + enc(e),
        enc(e) + b" " + enc(e),  # two objects in one message
        enc({**e, "metadata": {"k": 1, "nested": {"input": [1, 2]}}}),
        enc({**e, "metadata": {"k": "now a string"}}),
        enc({**e, "metadata": {}}),
        enc({**e, "metadata": None}),
        enc({**e, "metadata": [1]}),
        enc({**e, "brand_new_field": {"x": 1}}),
        enc(e)[:-1] + b', "metadata": {"a": 1}, "metadata": {"a": 2}}',
        enc({**e, "timestamp": "2026-11-01t10:00:00.123456789z"}),
        enc({**e, "timestamp": "2026-11-01 10:00:00+05:30"}),
        enc({**e, "timestamp": "2026-02-30T10:00:00Z"}),
        # Texts Arrow's timestamp parser refuses or could read otherwise than DuckDB does.
        *(enc({**e, "timestamp": ts}) for ts in (
            "2026-11-01T10:00:00.1234567Z", "2026-11-01T24:00:00Z", "2026-11-01T23:59:60Z", "2026-11-01T10:00:00+24:00",
            "2026-11-01T10:00:00-23:59", "2026-11-01T10:00:00+14:60", "0000-01-01T00:00:00Z", "2028-02-29T10:00:00Z",
            "9999-12-31T23:59:59.999999-01:00", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59.999999Z",
            "2026-11-01T10:00:00.5-00:00", "2026-11-01T10:00:00", "2026-11-01")),
        enc({**e, id_field: "é" * 256}),
        enc({**e, id_field: "é" * 257}),
        enc({**e, "schema_version": 2.0}),
        enc({**e, "schema_version": -0}),
        enc({**e, "type": "feedback" if "output" in e else "inference"}),
        enc(e)[:-1] + b', "note": "\\ud800"}',
        enc(e)[:-1] + b', "cost_usd": Infinity}',
        *_tricky_metadata(e),
    ]
    if "output" in e:
        chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "u1"}]
        out += [
            enc({**e, "input": chat}),
            enc({**e, "input": chat}).replace(b'"input": [', b'"input" :[', 1),
            enc({**e, "input": [{"role": "user", "content": None}]}),
            enc({**e, "input": [{"role": "user"}]}),
            enc({**e, "input": []}),
            enc({**e, "input": [*chat, {"role": "assistant", "content": "hello"}]}),  # the last user message
            enc({**e, "input": [{"role": "system", "content": "only"}]}),  # no user message: the last one
            enc({**e, "input": [None]}),
            enc({**e, "input": [{"role": None, "content": "x"}]}),
            enc({**e, "input": {"role": "user", "content": "x"}}),
            enc({**e, "input": ["hi"]}),
            enc({**e, "metadata": {"input": [{"role": "user", "content": "x"}]}, "input": "plain"}),
            enc({"metadata": {"input": [{"role": "user", "content": "x"}]}, **{k: v for k, v in e.items()
                                                                              if k != "input"}}),
            enc(e)[:-1] + b', "input": [{"role": "user", "content": "again"}]}',  # a duplicate `input`
            enc({**e, "input": chat})[:-1] + b', "input": "again"}',
        ]
    else:
        out += [
            enc({**e, "kind": "rating", "value": 4, "scale": [1, 10]}),
            enc({**e, "kind": "rating", "value": 4, "scale": [10, 1]}),
            enc({**e, "kind": "rating", "value": 4, "scale": [1, None]}),
            enc({**e, "kind": "rating", "value": 4, "scale": [1, 2, 3]}),
            enc({**e, "kind": "thumbs", "value": 0}),
            enc({**e, "kind": "rating", "value": 10, "scale": [1, 10]}),
            enc({**e, "kind": "rating", "value": 0.5, "scale": [0.5, 1]}),
            enc({**e, "kind": "preference", "value": 0, "other_inference_id": "x"}),
            enc({**e, "kind": "preference", "value": 0}),
            enc({**e, "kind": "correction", "correction": ""}),
            enc({**e, "kind": "flag", "reason": "toxic"}),
            enc({**e, "kind": "implicit"}),
            enc({**e, "source": "USER"}),
        ]
    return out


def _tricky_metadata(e: dict) -> list[bytes]:
    """Payloads whose `metadata` text a wrong cut out of the payload, or a wrong rewriting of it, would change."""
    enc = lambda o, **kw: json.dumps(o, **kw).encode()  # noqa: E731
    rest = {k: v for k, v in e.items() if k != "metadata"}
    deep = {"a": {"b": {"c": [1, {"d": "}]"}, [], {}]}}, "s": "{[\"]}", "t": "\\", "u": "\\\""}
    braces = {"s": "}\"{[", "t": "\\", "u": "\\\"", "n": {"x": "]}", "y": ["{", "\\}"]}, "v": "\\\\"}
    first, *others = rest.items()
    out = [
        enc({"metadata": braces, **rest}),  # not the last value: its end is found by a scan of the payload
        enc({first[0]: first[1], "metadata": braces, **dict(others)}, separators=(",", ":")),
        enc({"metadata": {"a": {"b": {}}, "c": [[1], [2]]}, **rest}),
        enc({**rest, "metadata": deep}),
        enc({"metadata": deep, **rest}),  # first, before every other field
        enc({**rest, "metadata": deep}, separators=(",", ":")),
        enc({**rest, "metadata": {"é": "中文 😀", "k": "\u00e9", "nl": "a\nb\tc"}}),
        enc({**rest, "metadata": {"é": "中文 😀", "plain": "x y"}}, ensure_ascii=False),
        enc({**rest, "metadata": {"q": 'say "metadata": {"x": 1}', "metadata": {"metadata": {}}}}),
        enc({**rest, "note": 'a "metadata": {"fake": 1} in text', "metadata": {"real": 1}}),
        enc({"session_id": '"metadata": {', **rest, "metadata": {"real": [1, 2]}}),
        enc({**rest, "metadata": {"t": 0.7, "x": 1e5, "y": -0.0, "z": 1.5, "big": 2**70, "neg": -3, "e": 1e-7}}),
        enc({**rest, "metadata": {"ints": [0, -1, 10, 2**63 - 1], "b": True, "f": False, "n": None}}),
        enc({**rest, "metadata": {"a": None}}),
        enc({**rest, "metadata": {"a": 1}})[:-1] + b', "metadata": null}',
        enc(rest)[:-1] + b', "metadata": null, "metadata": {"a": 1}}',
        enc(rest)[:-1] + b', "metadata" \t:\n {  "a" :  [ 1 ,2 ] ,"b":{ }\r\n}  }',
        enc(rest)[:-1] + b', "metadata":{"a":-0}}',
        enc(rest)[:-1] + b', "metadata":{"a":1.50, "b": 1E+2, "c": "x\\/y"}}',
        enc(rest)[:-1] + b', "x\\"metadata": {"a": 1}}',
        enc(rest)[:-1] + b', "metadata": {"a": 1, "a": 2}}',
        enc(rest)[:-1] + b', "metadata": {"a": 1}, "cost_usd": 0.5}',
    ]
    if "output" in e:
        out += [
            enc({**rest, "input": [{"role": "user", "content": "x", "metadata": {"m": 1}}], "metadata": {"a": 1}}),
            enc({**rest, "input": [{"role": "user", "content": "x", "metadata": {"m": 1}}]}),
            enc({**rest, "metadata": {"input": [{"role": "user", "content": "x"}]},
                 "input": [{"role": "user", "content": "y"}]}),
        ]
    return out


_VALIDATORS: dict[tuple[str, bool], BatchValidator] = {}


def _both(name: str, payloads: list[bytes]) -> tuple[tuple, tuple, BatchValidator]:
    for fast in (True, False):
        if (name, fast) not in _VALIDATORS:
            _VALIDATORS[name, fast] = BatchValidator(EVENT_TYPES[name], LIMIT, fast=fast)
    fast = _VALIDATORS[name, True]
    fast.rows_fast = fast.objects_cut = 0
    arr = pa.array(payloads, pa.binary())
    return fast.validate(arr), _VALIDATORS[name, False].validate(arr), fast


def _same(a: pa.Table, b: pa.Table) -> bool:
    # NaN never equals itself in Table.equals; an invalid `NaN` value is typed as NaN on both paths. Timestamps are
    # compared as integers: DuckDB types some beyond the year 9999, which Python's datetime cannot hold.
    def plain(t: pa.Table) -> list[dict]:
        return pa.table([c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in t.columns],
                        names=t.column_names).to_pylist()
    return a.equals(b) or (a.schema == b.schema and repr(plain(a)) == repr(plain(b)))


@pytest.mark.parametrize("name", ["inference", "feedback"])
def test_valid_events_take_the_fast_path_with_the_same_rows(events: list[dict], name: str) -> None:
    payloads = [json.dumps(e).encode() for e in _valid(events, name)]
    (typed, reasons), (typed_full, reasons_full), fast = _both(name, payloads)
    assert reasons == reasons_full == [None] * len(payloads)
    assert typed.equals(typed_full)
    assert fast.rows_fast == len(payloads)


@pytest.mark.parametrize("name", ["inference", "feedback"])
def test_events_with_realistic_metadata_take_the_fast_path_with_the_same_rows(name: str) -> None:
    events = list(generate(load_corpus(), 600, seed=5, metadata=True))
    payloads = [json.dumps(e).encode() for e in _valid(events, name)]
    payloads += [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode() for e in _valid(events, name)]
    (typed, reasons), (typed_full, reasons_full), fast = _both(name, payloads)
    assert reasons == reasons_full == [None] * len(payloads)
    assert typed.equals(typed_full)
    assert typed["metadata"].null_count == 0
    assert fast.rows_fast == len(payloads)
    # Parsed once, by DuckDB from the object's span alone: never by Arrow as well (item 13 of issue 9).
    assert fast.objects_cut == len(payloads)


@pytest.mark.parametrize("name", ["inference", "feedback"])
def test_metadata_that_is_not_the_last_field_is_cut_out_too(name: str) -> None:
    events = _valid(list(generate(load_corpus(), 300, seed=6, metadata=True)), name)
    first = [{"metadata": e["metadata"], **{k: v for k, v in e.items() if k != "metadata"}} for e in events]
    keys = [list(e) for e in events]
    middle = [{k: e[k] for k in [*ks[:2], "metadata", *[k for k in ks[2:] if k != "metadata"]]}
              for e, ks in zip(events, keys)]
    payloads = [json.dumps(e).encode() for e in first + middle]
    (typed, reasons), (typed_full, reasons_full), fast = _both(name, payloads)
    assert reasons == reasons_full == [None] * len(payloads)
    assert typed.equals(typed_full)
    assert fast.rows_fast == fast.objects_cut == len(payloads)


@pytest.mark.parametrize("name", ["inference", "feedback"])
def test_each_tricky_or_hostile_payload_gets_the_full_validators_verdict(events: list[dict], name: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    valid = _valid(events, name)
    odd = [p for e in valid[:3] for p in _tricky(e)] + [p for _, p in hostile_payloads(valid, 60, big_bytes=2 * LIMIT)]
    clean = [json.dumps(e).encode() for e in valid[:20]]
    # Each odd payload alone in its chunk, then as the one odd event of a chunk of valid ones.
    for chunk, batch in ((1, odd), (len(clean) + 1, [p for o in odd for p in (*clean, o)])):
        monkeypatch.setattr("flywheel.schemas.validation.CHUNK_ROWS", chunk)
        (typed, reasons), (typed_full, reasons_full), fast = _both(name, batch)
        for i, payload in enumerate(batch):
            assert reasons[i] == reasons_full[i], payload[:300]
            assert _same(typed.slice(i, 1), typed_full.slice(i, 1)), payload[:300]
        assert fast.rows_fast > 0


@pytest.mark.parametrize("name", ["inference", "feedback"])
def test_a_shuffled_mix_spanning_many_chunks_matches(events: list[dict], name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flywheel.schemas.validation.CHUNK_ROWS", 16)
    valid = _valid(events, name)
    clean = [json.dumps(e).encode() for e in valid]
    shuffled = clean + [p for e in valid[:5] for p in _tricky(e)]
    shuffled += [p for _, p in hostile_payloads(valid, 40, big_bytes=2 * LIMIT)]
    if name == "inference":  # tool-calling events (each chunk infers its tools' `parameters` anew), and bad shapes
        tools = tool_inferences(12)
        shuffled += [json.dumps(e).encode() for e in tools]
        shuffled += [json.dumps(b).encode() for _, b, _ in bad_shapes(tools[0])]
        clean[:0] = [json.dumps(e).encode() for e in tool_inferences(16, prefix="tc")]  # the first clean chunk
    random.Random(7).shuffle(shuffled)
    # Nearly half the shuffled payloads are odd, so a chunk of 16 of them is almost never clean: whether one was
    # depended on the corpus. A clean chunk ahead of every three shuffled ones makes some certain, on any corpus.
    mix = [p for i in range(0, len(shuffled), 48) for p in (*clean[i // 3:i // 3 + 16], *shuffled[i:i + 48])]
    (typed, reasons), (typed_full, reasons_full), fast = _both(name, mix)
    assert reasons == reasons_full
    assert _same(typed, typed_full)
    assert 0 < fast.rows_fast < len(mix)  # some chunks were clean, some were not


def test_a_payload_whose_first_metadata_is_a_value_keeps_its_object_and_the_same_row() -> None:
    """`"prompt_template": "metadata"` comes first: no span is cut there, Arrow reads the object and DuckDB writes
    it from the payload, beside rows whose objects were cut, in one chunk."""
    events = _valid(list(generate(load_corpus(), 60, seed=3, metadata=True)), "inference")[:10]
    left = [json.dumps({"prompt_template": "metadata", **{k: v for k, v in e.items() if k != "prompt_template"}})
            .encode() for e in events]
    payloads = left + [json.dumps(e).encode() for e in events]
    (typed, reasons), (typed_full, reasons_full), fast = _both("inference", payloads)
    assert reasons == reasons_full == [None] * len(payloads)
    assert typed.equals(typed_full)
    assert typed["metadata"].null_count == 0
    assert fast.rows_fast == len(payloads) and fast.objects_cut == len(events)
