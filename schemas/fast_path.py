"""The landing worker's fast path: Arrow's strict JSON reader types whole chunks, Arrow compute checks them.

The full validator (`flywheel.schemas.validation.batch_sql`) finds every reason an event breaks the contract, at the
price of probing each field's JSON type with DuckDB's JSON functions: three parses of every payload. Most chunks
hold only valid events, and for those a strict reader is enough: Arrow's JSON reader refuses, by failing the whole
read, any value whose JSON type is not its column's (a number where a string belongs, 1.5 or `true` for an integer,
a duplicate key, invalid JSON). So a chunk is read once by Arrow, its values are checked column by column with
Arrow compute, and only if all of that succeeds are its rows taken from here. Anything else (Arrow refuses, a value
is out of range, an unknown field, ...) sends the chunk to the full validator. This path never produces a reason.

Arrow reads the chunk's payloads joined by newlines, as a stream, from one buffer built for it (the only copy of the
payloads made here). That row i is payload i holds because every payload starts with `{` and ends with `}`: a JSON
value cannot then continue from one payload into the next (after a closing brace a parser expects a comma, a closing
bracket or the end, never `{`; inside a string the raw newline between two payloads is an error), and since each
payload yields at least one row, exactly `n` rows mean one row per payload.

Two contract fields have a free type. `input` (a string or a list of messages) is read as a string, unless a cheap
textual guess renamed it, in the chunk's buffer, to a key of the same length read as a list of messages: Arrow's
strictness then verifies the guess. `metadata` (any object) is inferred by Arrow only to see where it is present; its
text comes from DuckDB, on those rows only.
"""

from __future__ import annotations

import io
import json
import secrets
import string
from itertools import chain, repeat
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from flywheel.schemas.arrow import MESSAGES, TS
from flywheel.schemas.contract import DEFAULT_RATING_SCALE, EventType, Field, Rule

STRICT_TYPES = {"id": pa.string(), "string": pa.string(), "text": pa.string(), "enum": pa.string(),
                "timestamp": pa.string(), "number": pa.float64(), "integer": pa.int64(), "scale": pa.list_(pa.float64())}
"""Arrow types of the kinds Arrow can type strictly. Timestamps stay text: the contract's RFC 3339 check is stricter
than Arrow's timestamp parser."""

CHAT_INPUT = r'"input"\s*:\s*\['
"""Payloads whose `input` looks like a list of messages; a wrong guess only makes Arrow refuse the chunk."""

MIN_BLOCK_BYTES = 1 << 20


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name + '"'


class FastPath:
    """Reads chunks of one event type with Arrow (`read`) and checks many read chunks at once (`check`)."""

    def __init__(self, et: EventType, rfc3339: str) -> None:
        self.et = et
        strict = [(f.name, STRICT_TYPES[f.kind]) for f in et.fields if f.kind in STRICT_TYPES]
        self._has_input = any(f.kind == "input" for f in et.fields)
        self._chat_key = _chat_key({f.name for f in et.fields})
        self._schema = pa.schema(strict + ([("input", pa.string()), (self._chat_key, MESSAGES)]
                                           if self._has_input else []))
        self._joined = io.BytesIO()
        self.rfc3339 = f"^(?:{rfc3339})$"
        self.columns = [c for f in et.fields if f.name != "type" for c in (
            ("input_messages", "input") if f.kind == "input" else ("scale_min", "scale_max") if f.kind == "scale"
            else (f.name,))]
        """The typed columns `check` returns, as the full validator names them."""

    def read(self, values: Sequence[bytes], sizes: np.ndarray, first_row: int) -> pa.Table | None:
        """The strict fields of every payload of the chunk (`values`, of byte lengths `sizes`), with `_row`
        (first_row + i) and `raw` (the payload as read, newline included); or None when Arrow refuses the chunk, or
        it has a field the contract does not know."""
        n = len(values)
        if n == 0:
            return None
        # One buffer: payload, newline, payload, newline... A row of `raw` is a payload and its newline.
        buffer = self._join(values)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(sizes + 1, out=offsets[1:])
        large = offsets[-1] > np.iinfo(np.int32).max
        raw = pa.Array.from_buffers(pa.large_binary() if large else pa.binary(), n,
                                    [None, pa.py_buffer(offsets if large else offsets.astype(np.int32)),
                                     pa.py_buffer(buffer)])
        try:
            text = raw.cast(pa.large_string() if large else pa.string())
        except pa.ArrowInvalid:  # not UTF-8
            return None
        if not pc.all(pc.starts_with(text, "{")).as_py() or not pc.all(pc.ends_with(text, "}\n")).as_py():
            return None
        routed = np.zeros(n, np.bool_)
        if self._has_input:  # `"input": [` becomes `"<chat key>": [`, at the first match in each payload
            found = pc.find_substring_regex(text, CHAT_INPUT).to_numpy()
            routed = found >= 0
            if routed.any():
                at = offsets[:-1][routed] + found[routed] + 1  # just after the opening quote
                np.frombuffer(buffer, np.uint8)[at[:, None] + np.arange(len(self._chat_key))] = \
                    np.frombuffer(self._chat_key.encode(), np.uint8)
        longest = int(sizes.max()) + 1
        block = max(MIN_BLOCK_BYTES, 1 << (longest + 2).bit_length())  # a payload never spans two blocks
        try:
            table = pj.read_json(pa.BufferReader(pa.py_buffer(buffer)), read_options=pj.ReadOptions(block_size=block),
                                 parse_options=pj.ParseOptions(explicit_schema=self._schema,
                                                               unexpected_field_behavior="infer"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != n or set(table.column_names) - set(self._schema.names) - {"metadata"}:
            return None  # one payload held several objects, or an unknown field: the full validator keeps it
        has_metadata = pa.repeat(pa.scalar(False), n)
        if "metadata" in table.column_names:
            meta = table["metadata"]
            if not (pa.types.is_struct(meta.type) or pa.types.is_null(meta.type)):
                return None
            has_metadata = pc.is_valid(meta)
            table = table.drop_columns(["metadata"])
        if self._has_input:
            chat = table[self._chat_key]
            # A chat input exactly where the rename made one (had it renamed a key inside `metadata`, whose text
            # is taken from `raw`, the row goes to the full validator), and never beside a text `input` (a
            # duplicate key the rename hid from Arrow).
            if not pc.all(pc.equal(pc.is_valid(chat), pa.array(routed))).as_py() \
                    or pc.any(pc.and_(pc.is_valid(chat), pc.is_valid(table["input"]))).as_py():
                return None
            try:
                messages = chat.cast(MESSAGES)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return None
            table = table.drop_columns([self._chat_key]).append_column("input_messages", messages)
        # `raw` is kept only where `check` reads it (the text of `metadata`): otherwise the buffer is free again.
        return (table.append_column("_has_metadata", has_metadata)
                .append_column("_row", pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
                .append_column("raw", text if pc.any(has_metadata).as_py() else pa.nulls(n, text.type)))

    def _join(self, values: Sequence[bytes]) -> memoryview:
        """`values` joined, each followed by a newline, in the buffer the last chunk used if nothing holds it any
        more (else in a new one). Fresh memory for every chunk cost a page fault per 4 KB, a sixth of the worker's,
        and the join twice the time."""
        try:
            self._joined.seek(0)
            self._joined.writelines(chain.from_iterable(zip(values, repeat(b"\n"))))
        except BufferError:  # the last chunk's rows still refer to its buffer: they keep it
            self._joined = io.BytesIO()
            self._joined.writelines(chain.from_iterable(zip(values, repeat(b"\n"))))
        return self._joined.getbuffer()[:self._joined.tell()]

    def check(self, con: duckdb.DuckDBPyConnection, read: pa.Table) -> pa.Table:
        """Typed rows of `read` (the full validator's columns, but `reasons`) and `_ok`: the row breaks no rule.

        The rules are applied with Arrow compute, column by column, rather than by a query: a DuckDB query over
        these columns took ~10 ms to plan and start whatever the rows, and ran once per topic and batch on the
        worker's slowest stage (bench/ingest.py: 15% more events/s without it). DuckDB is still asked for what
        only it knows: the JSON text of `metadata`, and timestamps Arrow's parser refuses."""
        n = read.num_rows
        # Arrow's reader makes a record batch per block (~1 MB), and every compute call pays per chunk (a regex is
        # compiled per chunk): the short columns are made one chunk first, which costs them a small copy.
        long = {f.name for f in self.et.fields if f.kind in ("text", "input")} | {"input_messages", "raw"}
        read = pa.table([c if name in long else c.combine_chunks() for name, c in zip(read.column_names, read.columns)],
                        names=read.column_names)
        typed: dict[str, pa.ChunkedArray | pa.Array] = {}
        masks = []
        for f in self.et.fields:
            present, valid, derived = _field(f, read, con, self.rfc3339)
            typed.update(derived)
            if valid is not None:
                masks.append(pc.if_else(present, pc.fill_null(valid, False), not f.required))
            elif f.required:
                masks.append(present)
        masks.append(pc.or_(pc.is_null(read["type"]), pc.fill_null(pc.equal(read["type"], self.et.name), False)))
        for rule in self.et.rules:
            applies = pc.fill_null(pc.equal(read["kind"], rule.kind), False)
            masks.append(pc.invert(pc.and_(applies, pc.invert(pc.fill_null(_rule(rule, typed), False)))))
        ok = masks[0]
        for mask in masks[1:]:
            ok = pc.and_(ok, mask)
        return pa.table({"_row": read["_row"], **{name: typed[name] for name in self.columns},
                         "extra": pa.nulls(n, pa.string()), "_ok": ok})


def _field(f: Field, read: pa.Table, con: duckdb.DuckDBPyConnection, rfc3339: str
           ) -> tuple[Any, Any, dict[str, Any]]:
    """(present, valid where present or None if any value is, typed columns) of one field, as the full validator
    types and checks it."""
    k = f.kind
    if k == "input":
        text, messages = read["input"], read["input_messages"]
        chat = pc.is_valid(messages)
        last, messages_ok = _chat_inputs(messages)
        return (pc.or_(pc.is_valid(text), chat), pc.or_(pc.invert(chat), messages_ok),
                {"input_messages": messages, "input": pc.if_else(chat, last, text)})
    if k == "object":
        present = read["_has_metadata"]
        return present, present, {f.name: _object_text(con, read, f.name, present)}
    v = read[f.name]
    present = pc.is_valid(v)
    if k == "scale":
        lengths = pc.fill_null(pc.list_value_length(v), 0).to_numpy()
        pair = lengths == 2
        first = np.cumsum(lengths) - lengths
        ends = pc.list_flatten(v)
        lo, hi = (ends.take(pa.array(at, pa.int64(), mask=~pair)) for at in (first, first + 1))
        low, high = DEFAULT_RATING_SCALE
        return present, _all([pa.array(pair), pc.is_finite(lo), pc.is_finite(hi)]), {
            "scale_min": pc.fill_null(lo, low), "scale_max": pc.fill_null(hi, high)}
    checks = []
    if k == "id":
        checks.append(pc.not_equal(v, ""))
    if f.max_length is not None:
        checks.append(pc.less_equal(pc.utf8_length(v), f.max_length))
    if k == "enum":
        checks.append(pc.is_in(v, pa.array(f.choices, pa.string())))
    if k == "timestamp":
        checks.append(pc.match_substring_regex(v, rfc3339))
        v = _timestamps(con, v)
        checks.append(pc.is_valid(v))
    if k == "number":
        checks.append(pc.is_finite(v))
    if f.minimum is not None:
        checks.append(pc.greater_equal(v, f.minimum))
    if f.default is not None:
        v = pc.fill_null(v, f.default)
    return present, _all(checks) if checks else None, {} if f.name == "type" else {f.name: v}


def _all(checks: list[Any]) -> Any:
    out = checks[0]
    for c in checks[1:]:
        out = pc.and_(out, c)
    return out


def _rule(rule: Rule, typed: dict[str, Any]) -> Any:
    """The contract's cross-field rule (see `Rule`) over typed columns; null where SQL's would be null."""
    a = rule.args
    v = typed[str(a[0])]
    if rule.test == "one_of":
        return pc.is_in(v, pa.array(a[1:], v.type))
    if rule.test == "present":
        return pc.is_valid(v)
    if rule.test == "non_empty":
        return pc.and_(pc.is_valid(v), pc.greater(pc.utf8_length(v), 0))
    if rule.test == "less":
        return pc.less(v, typed[str(a[1])])
    return pc.or_(pc.is_null(v), pc.and_(pc.greater_equal(v, typed[str(a[1])]), pc.less_equal(v, typed[str(a[2])])))


def _chat_inputs(messages: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.Array]:
    """Per row of a chat input: its text (the content of the last user message, or else of the last message) and
    whether it is a valid one (at least one message, and every message has a role and a content)."""
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy()
    flat = pc.list_flatten(messages)
    role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")  # a null message: both null
    ends = np.cumsum(lengths)
    starts = ends - lengths
    some = lengths > 0
    pick = ends - 1
    ok = some.copy()
    if some.any():
        broken = pc.or_(pc.is_null(role), pc.is_null(content)).to_numpy()
        ok[some] = np.add.reduceat(broken, starts[some]) == 0
        user = pc.fill_null(pc.equal(role, "user"), False).to_numpy()
        last_user = np.maximum.reduceat(np.where(user, np.arange(len(user)), -1), starts[some])
        pick[some] = np.where(last_user >= 0, last_user, pick[some])
    texts = _take(content, pick[some])  # one text per chat input, in row order
    at = np.cumsum(some) - 1
    return texts.take(pa.array(at, pa.int64(), mask=~some)), pa.array(ok, pa.bool_())


def _take(values: pa.ChunkedArray, at: np.ndarray) -> pa.Array:
    """`values[at]` for increasing `at`, chunk by chunk: `ChunkedArray.take` first concatenates every chunk, here
    all the messages' texts of a batch, to take a few of them."""
    bounds = np.cumsum([0] + [len(c) for c in values.chunks])
    cut = np.searchsorted(at, bounds)
    parts = [values.chunk(i).take(pa.array(at[cut[i]:cut[i + 1]] - bounds[i]))
             for i in range(values.num_chunks) if cut[i] < cut[i + 1]]
    return pa.concat_arrays(parts) if parts else pa.array([], values.type)


def _timestamps(con: duckdb.DuckDBPyConnection, text: pa.ChunkedArray) -> pa.ChunkedArray:
    """RFC 3339 texts as UTC timestamps, null where DuckDB's TRY_CAST gives null (the full validator's typing).

    Arrow's parser agrees with DuckDB's where it accepts a text (tests/schemas/test_fast_path.py holds it to that);
    it refuses more (7 to 9 fractional digits, a lower-case `t` or `z`, hour 24, ...), and then DuckDB types them."""
    try:
        return pc.cast(text, TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _duckdb(con, pa.table({"v": text}), "TRY_CAST(v AS TIMESTAMPTZ)")


def _object_text(con: duckdb.DuckDBPyConnection, read: pa.Table, name: str, present: Any) -> pa.Array:
    """A free-form object field's JSON text, as the full validator writes it (by DuckDB, from the payload)."""
    at = pc.indices_nonzero(present).to_numpy()
    if len(at) == 0:
        return pa.nulls(read.num_rows, pa.string())
    text = _duckdb(con, read.select(["raw"]).take(at),
                   f"json_transform(raw, {_q(json.dumps({name: 'JSON'}))}).{_ident(name)}::VARCHAR")
    where = np.full(read.num_rows, -1, np.int64)
    where[at] = np.arange(len(at))
    return text.take(pa.array(where, mask=where < 0))


def _duckdb(con: duckdb.DuckDBPyConnection, table: pa.Table, expr: str) -> pa.ChunkedArray:
    """`expr` over each row of `table`, in row order."""
    con.register("fast", table.append_column("_i", pa.array(np.arange(table.num_rows, dtype=np.int64))))
    try:
        out = con.sql(f"SELECT _i, {expr} AS v FROM fast").to_arrow_table()
    finally:
        con.unregister("fast")
    if not out["_i"].equals(pa.chunked_array([np.arange(table.num_rows, dtype=np.int64)])):
        out = out.sort_by("_i")  # DuckDB keeps scan order in a plain projection; check rather than assume
    return out["v"]


def _chat_key(taken: set[str]) -> str:
    """The key a chat input is read under: as long as `input`, so that the rename happens in place, and no field of
    the contract. A producer may still send it: `read` checks that it appears exactly where the rename put it."""
    while True:
        key = "".join(secrets.choice(string.ascii_letters) for _ in range(len("input")))
        if key not in taken:
            return key
