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
strictness then verifies the guess. `metadata` (any object) is never parsed by Arrow where its span can be found:
DuckDB writes the object's JSON text from that span alone (it is the one parse of the object, with the writer the
full query uses), and then the object is blanked in the buffer (`{` spaces `}`) and its key renamed, so Arrow reads
an empty object under a key of its own, which confirms the key was the event's own (see `_cut_objects`). The text
of `tools`, which Arrow types but for each tool's `parameters`, comes from DuckDB over the payload, where present.
"""

from __future__ import annotations

import functools
import io
import json
import operator
import re
import secrets
import string
from itertools import chain, repeat
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.acero as ac
import pyarrow.compute as pc
import pyarrow.json as pj

from flywheel.schemas.arrow import MESSAGES, TS
from flywheel.schemas.contract import DEFAULT_RATING_SCALE, EventType, Field, Rule

STRICT_TYPES = {"id": pa.string(), "string": pa.string(), "text": pa.string(), "enum": pa.string(),
                "timestamp": pa.string(), "number": pa.float64(), "integer": pa.int64(),
                "scale": pa.list_(pa.float64()),
                "tools": pa.list_(pa.struct([("type", pa.string()), ("function", pa.struct([
                    ("name", pa.string()), ("description", pa.string())]))]))}
"""Arrow types of the kinds Arrow can type strictly. Timestamps stay text: the contract's RFC 3339 check is stricter
than Arrow's timestamp parser. A tool's `parameters` (any JSON Schema) is inferred, to check it is an object; the
text of `tools` comes from DuckDB, as `metadata`'s does."""

CHAT_INPUT = r'"input"\s*:\s*\['
"""Payloads whose `input` looks like a list of messages; a wrong guess only makes Arrow refuse the chunk."""

MIN_BLOCK_BYTES = 4 << 20
"""Arrow's JSON reader parses a chunk in blocks of this size, in parallel, and makes a record batch of each: larger
blocks mean fewer batches for everything downstream to go through one by one (at 1 MB, a 40k-event batch had 73)."""


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name + '"'


class FastPath:
    """Reads chunks of one event type with Arrow (`read`) and checks many read chunks at once (`check`)."""

    def __init__(self, et: EventType, rfc3339: str, use_threads: bool = True) -> None:
        self.et = et
        self.use_threads = use_threads
        """Whether Arrow's JSON reader parses a chunk's blocks on its thread pool (else on the calling thread)."""
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
        objects = [f.name for f in et.fields if f.kind == "object"]
        if len(objects) > 1:
            raise ValueError(f"the fast path reads one free-form object field, {et.name} has {objects}")
        self._object = objects[0] if objects else None
        self._object_key = _chat_key({f.name for f in et.fields} | {self._chat_key}, len(self._object or ""))
        self._next_key = r'\}\s*,\s*"(?:' + "|".join(re.escape(f.name) for f in et.fields) + r')"\s*:'
        """A closing brace followed by the next contract key: where an object that is not the last field ends."""
        self._long = {f.name for f in et.fields if f.kind in ("text", "input", "object", "tools")} \
            | {"input_messages", "raw"}
        self.objects_cut = 0
        """Objects of chunks Arrow read whose text was cut out (`_cut_objects`) rather than parsed by Arrow too."""
        """Columns of long texts, which `check` leaves in the chunks Arrow's reader made."""
        self._texts_from_raw = [f.name for f in et.fields if f.kind == "tools"]
        """Fields Arrow checks but whose text DuckDB takes from the payload."""

    def read(self, con: duckdb.DuckDBPyConnection, values: Sequence[bytes], sizes: np.ndarray, first_row: int
             ) -> pa.Table | None:
        """The strict fields of every payload of the chunk (`values`, of byte lengths `sizes`), with `_row`
        (first_row + i), the object field's JSON text where its span was cut out (`_cut_objects`), and `raw` (the
        payload as read, newline included, if an object is left for `check` to write, else null); or None when
        Arrow refuses the chunk, or it has a field the contract does not know."""
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
        cut = np.zeros(n, np.bool_)
        cut_text = None
        if self._object is not None:
            cut, cut_text = self._cut_objects(con, text, buffer, offsets)
        longest = int(sizes.max()) + 1
        block = max(MIN_BLOCK_BYTES, 1 << (longest + 2).bit_length())  # a payload never spans two blocks
        try:
            table = pj.read_json(pa.BufferReader(pa.py_buffer(buffer)),
                                 read_options=pj.ReadOptions(block_size=block, use_threads=self.use_threads),
                                 parse_options=pj.ParseOptions(explicit_schema=self._schema,
                                                               unexpected_field_behavior="infer"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        names = set(self._schema.names) | ({self._object, self._object_key} if self._object else set())
        if table.num_rows != n or set(table.column_names) - names:
            return None  # one payload held several objects, or an unknown field: the full validator keeps it
        has_object = np.zeros(n, np.bool_)
        left = np.zeros(n, np.bool_)  # an object Arrow read under its own key: `check` has DuckDB write it
        if self._object in table.column_names:
            obj = table[self._object]
            if not (pa.types.is_struct(obj.type) or pa.types.is_null(obj.type)):
                return None
            left = pc.is_valid(obj).to_numpy(zero_copy_only=False)
            table = table.drop_columns([self._object])
        if self._object_key in table.column_names:
            blank = table[self._object_key]
            # The renamed key is the event's own exactly where Arrow sees an object under it, and only there; the
            # blanked object is empty; and no payload has the field a second time.
            if not pa.types.is_struct(blank.type) or blank.type.num_fields \
                    or not np.array_equal(pc.is_valid(blank).to_numpy(zero_copy_only=False), cut) \
                    or (cut & left).any():
                return None
            table = table.drop_columns([self._object_key])
        elif cut.any():
            return None
        has_object = cut | left
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
        if self._object is not None:
            table = table.append_column(self._object, cut_text if cut_text is not None else pa.nulls(n, pa.string()))
            self.objects_cut += int(cut.sum())
        for c in self._texts_from_raw:  # Arrow inferred a tool's `parameters` per chunk: keep only the verdict
            table = table.set_column(table.schema.get_field_index(c), c, _tools_ok(table[c]))
        # `raw` is kept only where `check` reads it (an object left in place, `tools`): otherwise the buffer is free.
        from_raw = left.any() or any(table[c].null_count < n for c in self._texts_from_raw)
        return (table.append_column("_has_object", pa.array(has_object))
                .append_column("_row", pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
                .append_column("raw", text if from_raw else pa.nulls(n, text.type)))

    def _cut_objects(self, con: duckdb.DuckDBPyConnection, text: pa.Array, buffer: memoryview, offsets: np.ndarray
                     ) -> tuple[np.ndarray, pa.Array | None]:
        """Where the object field's span was found in each payload (a mask), and there its JSON text as DuckDB
        writes it; the object is then blanked in `buffer` (`{` spaces `}`) and its key renamed to `_object_key`.

        The span starts at the `{` after the payload's first `"<name>"` and a colon (a payload whose first one is
        followed by anything else, `null` or a value, keeps its object), and ends at the payload's last inner `}`
        (the object is the last field, as SDKs that merge it in write it), or else at the `}` before the next
        contract key, if no second `"<name>"` follows (a duplicate key, which Arrow must still see and refuse).
        A guessed span is kept only if DuckDB reads it as one JSON value: a span that ends too early ends inside a
        string or with brackets open, one that ends too late holds a second value, so only the object's own span
        is valid. A key that was not the event's own (inside another field) leaves no renamed column at the top
        level where `read` expects one, and the chunk goes to the full validator. Payloads whose span is not found
        keep their object: Arrow reads it, and `check` has DuckDB write it from the payload."""
        n = len(text)
        cut = np.zeros(n, np.bool_)
        key = '"' + (self._object or "") + '"'
        # Arrow's regex search finds a literal about four times faster than its substring search.
        first = pc.find_substring_regex(text, re.escape(key)).to_numpy()
        rows = np.flatnonzero(first >= 0)
        if not len(rows):
            return cut, None
        view = np.frombuffer(buffer, np.uint8)
        quote = offsets[rows] + first[rows]  # the key's opening quote
        at = _skip(view, quote + len(key), 1)
        colon = view[at] == ord(":")
        rows, quote, at = rows[colon], quote[colon], _skip(view, at[colon] + 1, 1)
        brace = view[at] == ord("{")
        rows, quote, start = rows[brace], quote[brace], at[brace]
        spans = _Spans(con, buffer, start)
        last = _skip(view, offsets[rows + 1] - 3, -1)  # the byte before the payload's closing `}` and newline
        spans.confirm(last, (view[last] == ord("}")) & (last > start))
        todo = np.flatnonzero(spans.end < 0)
        if len(todo):  # the object is not the last field: try the `}` before the next contract key
            pos = pc.find_substring_regex(_onwards(buffer, start[todo]), self._next_key).to_numpy()
            guess = np.full(len(rows), -1, np.int64)
            guess[todo] = np.where(pos >= 0, start[todo] + pos, -1)
            guess[guess >= offsets[rows + 1]] = -1
            if (guess >= 0).any():  # the field once only: no second key after the object
                after = np.flatnonzero(guess >= 0)
                again = pc.find_substring_regex(_onwards(buffer, guess[after] + 1), re.escape(key)).to_numpy()
                twice = (again >= 0) & (guess[after] + 1 + again < offsets[rows[after] + 1])
                guess[after[twice]] = -1
            spans.confirm(guess, guess >= 0)
        found = np.flatnonzero(spans.end >= 0)
        if not len(found):
            return cut, None
        rows, quote, start, end = rows[found], quote[found], start[found], spans.end[found]
        written = spans.texts(found)  # taken before the blanking below changes the buffer
        name = self._object_key.encode()
        view[(quote + 1)[:, None] + np.arange(len(name))] = np.frombuffer(name, np.uint8)
        spaces = memoryview(b" " * int((end - start).max()))
        for s, e in zip(start.tolist(), end.tolist()):
            buffer[s + 1:e] = spaces[:e - s - 1]
        cut[rows] = True
        if len(rows) == n:  # every payload's object cut out, in row order
            return cut, written
        at_row = np.full(n, -1, np.int64)
        at_row[rows] = np.arange(len(rows))
        return cut, written.take(pa.array(at_row, mask=at_row < 0))

    def _join(self, values: Sequence[bytes]) -> memoryview:
        """`values` joined, each followed by a newline, in the buffer the last chunk used if nothing holds it any
        more (else in a new one). Fresh memory for every chunk cost a page fault per 4 KB, a sixth of the worker's,
        and the join twice the time. The buffer keeps the size of the largest chunk (CHUNK_BYTES, or one payload)."""
        try:
            self._joined.seek(0)
            self._joined.writelines(chain.from_iterable(zip(values, repeat(b"\n"))))
        except BufferError:  # the last chunk's rows still refer to its buffer: they keep it
            self._joined = io.BytesIO()
            self._joined.writelines(chain.from_iterable(zip(values, repeat(b"\n"))))
        return self._joined.getbuffer()[:self._joined.tell()]

    def check(self, con: duckdb.DuckDBPyConnection, read: pa.Table) -> pa.Table:
        """Typed rows of `read` (the full validator's columns, but `reasons`) and `_ok`: the row breaks no rule.

        The rules are Arrow expressions (one per field, as the full query has a condition per field) evaluated by
        one Acero projection, not a DuckDB query (~10 ms to plan and start whatever the rows) nor a hundred compute
        calls: each call gives up the GIL and must take it back, and beside a thread that holds it for 3 ms at a
        time (as the consuming one does) checking 20k rows took 210 ms that way, against 14 ms alone; in one
        projection, 62 ms. DuckDB is still asked for what only it knows: the JSON text of `metadata`, and
        timestamps Arrow's parser refuses."""
        n = read.num_rows
        # Arrow's reader makes a record batch per block, and an expression pays per batch (a regex is compiled for
        # each): the short columns are made one chunk first, which costs them a small copy.
        short = read.select([c for c in read.column_names if c not in self._long]).combine_chunks()
        columns = {**{c: short[c] for c in short.column_names},
                   **{c: read[c] for c in read.column_names if c in self._long}}
        typed: dict[str, Any] = {}  # derived typed columns: an expression over `columns`, or an array
        masks = []
        for f in self.et.fields:
            present, valid, derived = _field(f, read, columns, con, self.rfc3339)
            typed.update(derived)
            if valid is not None:
                masks.append(pc.if_else(present, pc.coalesce(valid, _FALSE), pc.scalar(not f.required)))
            elif f.required:
                masks.append(present)
        masks.append(pc.field("type").is_null() | pc.coalesce(pc.field("type") == self.et.name, _FALSE))
        for rule in self.et.rules:
            applies = pc.coalesce(pc.field("kind") == rule.kind, _FALSE)
            masks.append(~(applies & ~pc.coalesce(_rule(rule, typed), _FALSE)))
        ok = _all(masks)
        derived = {name: e for name, e in typed.items() if isinstance(e, pc.Expression)}
        plan = ac.Declaration.from_sequence([
            ac.Declaration("table_source", ac.TableSourceNodeOptions(pa.table(columns))),
            ac.Declaration("project", ac.ProjectNodeOptions([pc.field("_row"), ok, *derived.values()],
                                                            ["_row", "_ok", *derived]))])
        out = plan.to_table(use_threads=False)  # one thread keeps the rows in order
        if not out["_row"].equals(short["_row"]):
            raise AssertionError("the checking projection reordered rows")
        result = {name: out[name] if name in derived else typed[name] if name in typed else read[name]
                  for name in self.columns}
        return pa.table({"_row": short["_row"], **result, "extra": pa.nulls(n, pa.string()), "_ok": out["_ok"]})


_FALSE = pc.scalar(False)


def _field(f: Field, read: pa.Table, columns: dict[str, Any], con: duckdb.DuckDBPyConnection, rfc3339: str
           ) -> tuple[Any, Any, dict[str, Any]]:
    """(present, valid where present or None if any value is, derived typed columns) of one field, as the full
    validator types and checks it: expressions over `columns`, to which what is computed beforehand is added."""
    k = f.kind
    v = pc.field(f.name)
    if k == "input":
        messages = read["input_messages"]
        chat = columns["_chat"] = pc.is_valid(messages)
        last, columns["_chat_ok"] = _chat_inputs(messages)
        return (v.is_valid() | pc.field("_chat"), ~pc.field("_chat") | pc.field("_chat_ok"),
                {"input": pc.if_else(chat, last, read["input"])})
    if k == "object":
        return pc.field("_has_object"), None, {f.name: _object_text(con, read, f.name)}
    if k == "tools":  # `read` holds the verdict of `_tools_ok`; the text comes from the payload
        return v.is_valid(), v, {f.name: _payload_text(con, read, f.name, pc.is_valid(read[f.name]))}
    if k == "scale":
        lengths = pc.fill_null(pc.list_value_length(read[f.name]), 0).to_numpy()
        pair = lengths == 2
        first = np.cumsum(lengths) - lengths
        ends = pc.list_flatten(read[f.name])
        columns["_pair"] = pa.array(pair)
        columns["_lo"], columns["_hi"] = (ends.take(pa.array(at, pa.int64(), mask=~pair)) for at in (first, first + 1))
        lo, hi = pc.field("_lo"), pc.field("_hi")
        low, high = DEFAULT_RATING_SCALE
        return v.is_valid(), pc.field("_pair") & pc.is_finite(lo) & pc.is_finite(hi), {
            "scale_min": pc.coalesce(lo, pc.scalar(low)), "scale_max": pc.coalesce(hi, pc.scalar(high))}
    checks = []
    typed = {}
    if k == "id":
        checks.append(v != "")
    if f.max_length is not None:
        checks.append(pc.utf8_length(v) <= f.max_length)
    if k == "enum":
        checks.append(v.isin(pa.array(f.choices, pa.string())))
    if k == "timestamp":
        columns[f"_typed_{f.name}"] = _timestamps(con, read[f.name])
        typed[f.name] = pc.field(f"_typed_{f.name}")
        checks += [pc.match_substring_regex(v, pattern=rfc3339), typed[f.name].is_valid()]
    if k == "number":
        checks.append(pc.is_finite(v))
    if f.minimum is not None:
        checks.append(v >= f.minimum)
    if f.default is not None:
        typed[f.name] = pc.coalesce(v, pc.scalar(f.default))
    return v.is_valid(), _all(checks) if checks else None, typed


def _all(conditions: list[pc.Expression]) -> pc.Expression:
    return functools.reduce(operator.and_, conditions)


def _rule(rule: Rule, typed: dict[str, Any]) -> pc.Expression:
    """The contract's cross-field rule (see `Rule`) over typed columns; null where SQL's would be null."""
    def col(name: str | float) -> pc.Expression:
        e = typed.get(str(name))
        return e if isinstance(e, pc.Expression) else pc.field(str(name))
    a = rule.args
    v = col(a[0])
    if rule.test == "one_of":
        return v.isin(pa.array(a[1:], pa.float64()))
    if rule.test == "present":
        return v.is_valid()
    if rule.test == "non_empty":
        return v.is_valid() & (pc.utf8_length(v) > 0)
    if rule.test == "less":
        return v < col(a[1])
    return v.is_null() | ((v >= col(a[1])) & (v <= col(a[2])))


def _chat_inputs(messages: pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.Array]:
    """Per row of a chat input: its text (the content of the last user message, or else of the last message) and
    whether it is a valid one (at least one message, each as the contract says: see `validation._message_ok`)."""
    lengths = pc.fill_null(pc.list_value_length(messages), 0).to_numpy()
    flat = pc.list_flatten(messages)
    role, content = pc.struct_field(flat, "role"), pc.struct_field(flat, "content")  # a null message: both null
    ends = np.cumsum(lengths)
    starts = ends - lengths
    some = lengths > 0
    pick = ends - 1
    ok = some.copy()
    if some.any():
        ok[some] = np.logical_and.reduceat(_messages_ok(flat, role, content), starts[some])
        user = pc.fill_null(pc.equal(role, "user"), False).to_numpy()
        last_user = np.maximum.reduceat(np.where(user, np.arange(len(user)), -1), starts[some])
        pick[some] = np.where(last_user >= 0, last_user, pick[some])
    texts = _take(content, pick[some])  # one text per chat input, in row order
    at = np.cumsum(some) - 1
    return texts.take(pa.array(at, pa.int64(), mask=~some)), pa.array(ok, pa.bool_())


def _true(a: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(a, False).to_numpy(zero_copy_only=False), np.bool_)


def _every(ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per list of `lengths` items, whether `ok` holds for all of its items (an empty list: it does)."""
    out = np.ones(len(lengths), np.bool_)
    some = lengths > 0
    if some.any():
        out[some] = np.logical_and.reduceat(ok, (np.cumsum(lengths) - lengths)[some])
    return out


def _messages_ok(flat: pa.ChunkedArray, role: pa.ChunkedArray, content: pa.ChunkedArray) -> np.ndarray:
    """Per message (Arrow has typed every value strictly), the contract's rules on content, tool ids and calls."""
    calls = pc.struct_field(flat, "tool_calls")
    n_calls = pc.fill_null(pc.list_value_length(calls), 0).to_numpy()
    call = pc.list_flatten(calls)
    fn = pc.struct_field(call, "function")
    call_ok = (_true(pc.is_valid(call)) & _true(pc.is_valid(pc.struct_field(call, "id")))
               & _true(pc.equal(pc.struct_field(call, "type"), "function")) & _true(pc.is_valid(fn))
               & _true(pc.is_valid(pc.struct_field(fn, "name"))) & _true(pc.is_valid(pc.struct_field(fn, "arguments"))))
    assistant = _true(pc.equal(role, "assistant"))
    tool_id = pc.struct_field(flat, "tool_call_id")
    return (_true(pc.is_valid(role)) & (_true(pc.is_valid(content)) | (assistant & (n_calls > 0)))
            & (~_true(pc.equal(role, "tool")) | _true(pc.greater(pc.utf8_length(tool_id), 0)))
            & (~_true(pc.is_valid(calls)) | (assistant & _every(call_ok, n_calls))))


def _tools_ok(tools: pa.ChunkedArray) -> pa.Array:
    """Per row, whether `tools` is a non-empty list of valid tools (see `validation._tool_ok`); null where absent."""
    lengths = pc.fill_null(pc.list_value_length(tools), 0).to_numpy()
    tool = pc.list_flatten(tools)
    fn = pc.struct_field(tool, "function")
    ok = (_true(pc.equal(pc.struct_field(tool, "type"), "function"))
          & _true(pc.greater(pc.utf8_length(pc.struct_field(fn, "name")), 0)))
    fn_type = tools.type.value_type.field("function").type
    if fn_type.get_field_index("parameters") >= 0:  # inferred: an object, or a null, is the only valid value
        params = fn_type.field("parameters").type
        if not (pa.types.is_struct(params) or pa.types.is_null(params)):
            ok &= ~_true(pc.is_valid(pc.struct_field(fn, "parameters")))
    return pa.array((lengths > 0) & _every(ok, lengths), pa.bool_(), mask=~_true(pc.is_valid(tools)))


def _take(values: pa.ChunkedArray, at: np.ndarray) -> pa.Array:
    """`values[at]` for increasing `at`, chunk by chunk: `ChunkedArray.take` first concatenates every chunk, here
    all the messages' texts of a batch, to take a few of them."""
    at = np.asarray(at, np.int64)
    bounds = np.cumsum([0] + [len(c) for c in values.chunks], dtype=np.int64)
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


def _object_text(con: duckdb.DuckDBPyConnection, read: pa.Table, name: str) -> pa.ChunkedArray:
    """A free-form object field's JSON text, as the full validator writes it: cut out by `read`, or else written by
    DuckDB from the payload (where `read` left the object in place)."""
    left = pc.and_(read["_has_object"], pc.is_null(read[name]))
    if not pc.any(left).as_py():
        return read[name]
    return pc.coalesce(read[name], _payload_text(con, read, name, left))


def _payload_text(con: duckdb.DuckDBPyConnection, read: pa.Table, name: str, present: Any) -> pa.ChunkedArray:
    """Field `name`'s JSON text where `present`, as the full validator writes it (by DuckDB, from the payload)."""
    if not pc.any(present).as_py():
        return pa.chunked_array([pa.nulls(read.num_rows, pa.string())])
    extract = f"json_transform(raw, {_q(json.dumps({name: 'JSON'}))}).{_ident(name)}::VARCHAR"
    return _duckdb(con, pa.table({"raw": read["raw"], "present": present}), f"CASE WHEN present THEN {extract} END")


_JSON_SPACE = np.array([ord(c) for c in " \t\n\r"], np.uint8)


def _skip(view: np.ndarray, at: np.ndarray, step: int) -> np.ndarray:
    """Positions `at` moved by `step` past JSON whitespace (a payload has a non-space byte in each direction)."""
    at = at.copy()
    while True:
        space = np.isin(view[at], _JSON_SPACE)
        if not space.any():
            return at
        at[space] += step


def _onwards(buffer: memoryview, starts: np.ndarray) -> pa.Array:
    """The buffer's text from each of the increasing positions `starts` up to the next one (the last: to the end),
    without a copy: a search in element i finds what follows `starts[i]` first, and a match found beyond the end
    of that payload is the caller's to discard."""
    bounds = np.append(starts, len(buffer)).astype(np.int64)
    return pa.Array.from_buffers(pa.large_string(), len(starts), [None, pa.py_buffer(bounds), pa.py_buffer(buffer)])


class _Spans:
    """Objects starting at `start` in `buffer` whose ends are guessed, and confirmed by DuckDB reading the span as
    one JSON value; `texts` gives what DuckDB wrote for each confirmed one (`TRY(json(...))`, the full query's
    writer: it rewrites numbers, escapes and whitespace)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, buffer: memoryview, start: np.ndarray) -> None:
        self.con, self.buffer, self.start = con, buffer, start
        self.end = np.full(len(start), -1, np.int64)
        """The closing brace of each object, or -1 while none is confirmed."""
        self._texts: list[pa.Array] = []
        self._at = np.full(len(start), -1, np.int64)  # index of each confirmed object's text in `_texts`, joined

    def confirm(self, guess: np.ndarray, where: np.ndarray) -> None:
        idx = np.flatnonzero(where & (self.end < 0))
        if not len(idx):
            return
        # One array over the buffer, spans and the gaps between them in turn, without a copy: DuckDB reads it in
        # place and parses the spans only (a filter). A copy of the spans (`take`) cost a third more, and DuckDB
        # reading string views of them in place a third more again.
        bounds = np.empty(2 * len(idx), np.int64)
        bounds[0::2], bounds[1::2] = self.start[idx], guess[idx] + 1
        both = pa.table({"s": pa.Array.from_buffers(pa.large_string(), len(bounds) - 1,
                                                    [None, pa.py_buffer(bounds), pa.py_buffer(self.buffer)]),
                         "span": np.arange(len(bounds) - 1) % 2 == 0})
        try:  # most guesses are right, and TRY costs half as much again as the parse: it is for when one is not
            written = _duckdb(self.con, both, "json(s)::VARCHAR", where="span").combine_chunks()
        except duckdb.InvalidInputException:
            written = _duckdb(self.con, both, "TRY(json(s))::VARCHAR", where="span").combine_chunks()
        ok = pc.is_valid(written).to_numpy(zero_copy_only=False)
        self.end[idx[ok]] = guess[idx[ok]]
        self._at[idx[ok]] = sum(len(t) for t in self._texts) + np.flatnonzero(ok)
        self._texts.append(written.cast(pa.string()))

    def texts(self, which: np.ndarray) -> pa.Array:
        """The written texts of confirmed objects `which` (indices into `start`), in that order."""
        joined = pa.concat_arrays(self._texts) if len(self._texts) != 1 else self._texts[0]
        at = self._at[which]
        if len(at) == len(joined) and np.array_equal(at, np.arange(len(at))):
            return joined  # every object confirmed at the first guess, as for SDK payloads: no copy
        return joined.take(pa.array(at))


def _duckdb(con: duckdb.DuckDBPyConnection, table: pa.Table, expr: str, where: str | None = None
            ) -> pa.ChunkedArray:
    """`expr` over each row of `table` (or only the rows where boolean column `where` is true), in row order."""
    con.register("fast", table.append_column("_i", pa.array(np.arange(table.num_rows, dtype=np.int64))))
    try:
        out = con.sql(f"SELECT _i, {expr} AS v FROM fast" + (f" WHERE {where}" if where else "")).to_arrow_table()
    finally:
        con.unregister("fast")
    rows = np.arange(table.num_rows, dtype=np.int64) if where is None else \
        np.flatnonzero(table[where].to_numpy()).astype(np.int64)
    if not out["_i"].equals(pa.chunked_array([rows], pa.int64())):
        out = out.sort_by("_i")  # DuckDB keeps scan order in a plain projection; check rather than assume
    return out["v"]


def _chat_key(taken: set[str], length: int = len("input")) -> str:
    """A key a renamed value is read under (a chat input, a blanked object): as long as the original, so that the
    rename happens in place, and no field of the contract. A producer may still send it: `read` checks that it
    appears exactly where the rename put it."""
    while True:
        key = "".join(secrets.choice(string.ascii_letters) for _ in range(length))
        if key not in taken:
            return key
