"""The landing worker's fast path: Arrow's strict JSON reader types whole chunks, one small DuckDB query checks them.

The full validator (`flywheel.schemas.validation.batch_sql`) finds every reason an event breaks the contract, at the
price of probing each field's JSON type with DuckDB's JSON functions: three parses of every payload. Most chunks
hold only valid events, and for those a strict reader is enough: Arrow's JSON reader refuses, by failing the whole
read, any value whose JSON type is not its column's (a number where a string belongs, 1.5 or `true` for an integer,
a duplicate key, invalid JSON). So a chunk is read once by Arrow, its values are checked by one query over typed
columns, and only if all of that succeeds are its rows taken from here. Anything else (Arrow refuses, a value is out
of range, an unknown field, ...) sends the chunk to the full validator. This path never produces a reason.

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

import json
import secrets
import string
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from flywheel.schemas.arrow import MESSAGES
from flywheel.schemas.contract import DEFAULT_RATING_SCALE, EventType, Field

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
    """Reads chunks of one event type with Arrow (`read`) and checks many read chunks in one query (`check`)."""

    def __init__(self, et: EventType, rfc3339: str) -> None:
        self.et = et
        strict = [(f.name, STRICT_TYPES[f.kind]) for f in et.fields if f.kind in STRICT_TYPES]
        self._has_input = any(f.kind == "input" for f in et.fields)
        self._chat_key = _chat_key({f.name for f in et.fields})
        self._schema = pa.schema(strict + ([("input", pa.string()), (self._chat_key, MESSAGES)]
                                           if self._has_input else []))
        self.sql, self.columns = _check_sql(et, rfc3339)

    def read(self, values: Sequence[bytes], sizes: np.ndarray, first_row: int) -> pa.Table | None:
        """The strict fields of every payload of the chunk (`values`, of byte lengths `sizes`), with `_row`
        (first_row + i) and `raw` (the payload as read, newline included); or None when Arrow refuses the chunk, or
        it has a field the contract does not know."""
        n = len(values)
        if n == 0:
            return None
        # One buffer: payload, newline, payload, newline... A row of `raw` is a payload and its newline.
        buffer = bytearray(b"\n").join([*values, b""])
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
        return (table.append_column("_has_metadata", has_metadata)
                .append_column("_row", pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
                .append_column("raw", text))

    def check(self, con: duckdb.DuckDBPyConnection, read: pa.Table) -> pa.Table:
        """Typed rows of `read` (the full validator's columns, but `reasons`) and `_ok`: the row breaks no rule.

        The query returns only the columns it derives; the others (the long texts among them) are taken from
        `read` as they are, rather than copied through DuckDB and back."""
        con.register("fast", read)
        try:
            derived = con.sql(self.sql).to_arrow_table()
        finally:
            con.unregister("fast")
        if not derived["_row"].equals(read["_row"]):  # `read` is in row order; DuckDB keeps scan order, but check
            derived = derived.sort_by("_row")
        columns = {name: derived[name] if name in derived.column_names else read[name] for name in self.columns}
        return pa.table({"_row": derived["_row"], **columns, "extra": pa.nulls(read.num_rows, pa.string()),
                         "_ok": derived["_ok"]})


def _chat_key(taken: set[str]) -> str:
    """The key a chat input is read under: as long as `input`, so that the rename happens in place, and no field of
    the contract. A producer may still send it: `read` checks that it appears exactly where the rename put it."""
    while True:
        key = "".join(secrets.choice(string.ascii_letters) for _ in range(len("input")))
        if key not in taken:
            return key


def _field(f: Field, rfc3339: str) -> tuple[list[tuple[str, str]], str]:
    """([(column, typed expression)], condition that a present value is valid) for a strictly typed field."""
    v = _ident(f.name)
    k = f.kind
    if k == "input":
        last_user = ("coalesce(list_last(list_filter(input_messages, lambda m: m.role = 'user')).content, "
                     "list_last(input_messages).content)")
        return ([("input_messages", _ident("input_messages")),
                 ("input", f"CASE WHEN input_messages IS NOT NULL THEN {last_user} ELSE input END")],
                "input_messages IS NULL OR (len(input_messages) > 0 AND "
                "len(list_filter(input_messages, lambda m: m.role IS NULL OR m.content IS NULL)) = 0)")
    if k == "object":
        extract = _q(json.dumps({f.name: "JSON"}))
        return [(f.name, f"CASE WHEN _has_metadata THEN json_transform(raw, {extract}).{v}::VARCHAR END")], "true"
    if k == "scale":
        lo, hi = DEFAULT_RATING_SCALE
        ends = f"{v}[1] IS NOT NULL AND {v}[2] IS NOT NULL AND isfinite({v}[1]) AND isfinite({v}[2])"
        return ([("scale_min", f"coalesce({v}[1], {lo})"), ("scale_max", f"coalesce({v}[2], {hi})")],
                f"len({v}) = 2 AND {ends}")
    ok = []
    if k == "id":
        ok.append(f"{v} <> ''")
    if f.max_length is not None:
        ok.append(f"length({v}) <= {f.max_length}")
    if k == "enum":
        ok.append(f"list_contains([{', '.join(map(_q, f.choices))}], {v})")
    if k == "timestamp":
        ok.append(f"regexp_full_match({v}, {_q(rfc3339)}) AND TRY_CAST({v} AS TIMESTAMPTZ) IS NOT NULL")
    if k == "number":
        ok.append(f"isfinite({v})")
    if f.minimum is not None:
        ok.append(f"{v} >= {f.minimum}")
    typed = f"TRY_CAST({v} AS TIMESTAMPTZ)" if k == "timestamp" else v
    if f.default is not None:
        typed = f"coalesce({typed}, {_q(f.default) if isinstance(f.default, str) else f.default})"
    return [(f.name, typed)], " AND ".join(ok) or "true"


def _check_sql(et: EventType, rfc3339: str) -> tuple[str, list[str]]:
    """The checking query over `fast`, and the names of the typed columns (the query returns those it derives)."""
    cols: list[tuple[str, str]] = []
    valid: list[str] = []
    for f in et.fields:
        c, ok = _field(f, rfc3339)
        cols += c
        present = "(input IS NOT NULL OR input_messages IS NOT NULL)" if f.kind == "input" else \
            "_has_metadata" if f.kind == "object" else f"{_ident(f.name)} IS NOT NULL"
        valid.append(f"CASE WHEN {present} THEN coalesce({ok}, false) ELSE {'false' if f.required else 'true'} END")
    valid.append(f'("type" IS NULL OR "type" = {_q(et.name)})')
    # Every field is valid when a rule is looked at, so a rule only needs its own condition, over typed columns.
    rules = [f"NOT (kind = {_q(r.kind)} AND NOT coalesce({r.sql}, false))" for r in et.rules] or ["true"]
    typed = ",\n    ".join(f"{expr} AS {_ident(name)}" for name, expr in cols)
    derived = "".join(f"{_ident(name)}, " for name, expr in cols if name != "type" and expr != _ident(name))
    return f"""
WITH typed AS (
  SELECT _row,
    {typed},
    {" AND ".join(f"({c})" for c in valid)} AS _fields_ok
  FROM fast
)
SELECT _row, {derived}_fields_ok AND {" AND ".join(f"({r})" for r in rules)} AS _ok
FROM typed
""", [name for name, _ in cols if name != "type"]
