"""Validators derived from the contract: one per event for the SDK, one vectorized over a batch for the worker.

Both read the same `Field` lists and produce the same reason texts (`_Messages`); tests hold them to the same
verdict on a corpus of valid and hostile events, so an event gets one verdict whichever path sees it.

The batch validator's full query runs over an Arrow table of raw payloads: DuckDB's JSON functions parse each
payload into a struct of values and the JSON type of every field, types are checked on those, and every violation
becomes a reason. Chunks of valid events are typed faster by Arrow's strict reader (`flywheel.schemas.fast_path`)
and only reach the full query when something in them is wrong. Per-event Python only runs for byte-level problems
(invalid UTF-8) and only inside a batch that has them.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from datetime import datetime
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.schemas.contract import DEFAULT_RATING_SCALE, EventType, Field, Rule
from flywheel.schemas.fast_path import FastPath, _ident, _q

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
_RFC3339_RE = re.compile(RFC3339)
_TYPE_NAMES = {
    "id": "a non-empty string", "string": "a string", "text": "a string", "enum": "a string",
    "timestamp": "an RFC 3339 timestamp with an offset", "number": "a finite number", "integer": "an integer",
    "object": "a JSON object", "input": "a string or a non-empty list of {role, content} messages",
    "scale": "a [min, max] pair of numbers",
}


class _Messages:
    """Reason texts, shared by both validators (tests compare them literally)."""

    invalid_json = "payload is not valid JSON"
    not_object = "event must be a JSON object"
    duplicate_key = "event has a duplicate key"
    invalid_utf8 = "payload is not valid UTF-8"
    no_value = "message has no value (a tombstone)"

    @staticmethod
    def oversized(size: int, limit: int) -> str:
        return f"payload of {size} bytes exceeds the {limit}-byte limit"

    @staticmethod
    def missing(f: Field) -> str:
        return f"missing required field `{f.name}`"

    @staticmethod
    def wrong_type(f: Field) -> str:
        return f"`{f.name}` must be {_TYPE_NAMES[f.kind]}"

    @staticmethod
    def too_long(f: Field) -> str:
        return f"`{f.name}` is longer than {f.max_length} characters"

    @staticmethod
    def below(f: Field) -> str:
        return f"`{f.name}` must be >= {f.minimum:g}"

    @staticmethod
    def not_in(f: Field) -> str:
        return f"`{f.name}` must be one of {', '.join(f.choices)}"

    @staticmethod
    def wrong_topic(et: EventType, tag: str) -> str:
        return f"a {tag} event was sent where {et.name} events belong"


M = _Messages


# --------------------------------------------------------------------------------------------------- per event


def _constant(name: str) -> float:
    # NaN and Infinity are not JSON, but DuckDB's parser takes them: parse them here too, so that both validators
    # reach the same verdict (a non-finite number then fails its field's check: numbers must be finite).
    return float(name)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


class _DuplicateKey(ValueError):
    pass


def parse_payload(payload: bytes | str | None, max_bytes: int | None = None
                  ) -> tuple[dict[str, Any] | None, list[str]]:
    """Parse one raw payload the way the worker does; return the object or the reasons it cannot be one."""
    if payload is None:
        return None, [M.no_value]
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if max_bytes is not None and len(raw) > max_bytes:
        return None, [M.oversized(len(raw), max_bytes)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, [M.invalid_utf8]
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except _DuplicateKey:
        return None, [M.duplicate_key]
    except (ValueError, RecursionError):
        return None, [M.invalid_json]
    if not isinstance(obj, dict):
        return None, [M.not_object]
    return obj, []


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_value(f: Field, v: Any) -> tuple[Any, list[str]]:
    """Typed value and the reasons it breaks `f` (v is present and not null)."""
    k = f.kind
    if k in ("id", "string", "text", "enum"):
        if not isinstance(v, str) or (k == "id" and v == ""):
            return None, [M.wrong_type(f)]
        if f.max_length is not None and len(v) > f.max_length:
            return None, [M.too_long(f)]
        if k == "enum" and v not in f.choices:
            return None, [M.not_in(f)]
        return v, []
    if k == "timestamp":
        if not isinstance(v, str) or not _RFC3339_RE.fullmatch(v):
            return None, [M.wrong_type(f)]
        try:
            return datetime.fromisoformat(v.replace("z", "Z").replace("t", "T")), []
        except ValueError:
            return None, [M.wrong_type(f)]
    if k in ("number", "integer"):
        ok = _is_number(v) if k == "number" else (
            isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX)
        if not ok:
            return None, [M.wrong_type(f)]
        if f.minimum is not None and v < f.minimum:
            return None, [M.below(f)]
        return (float(v) if k == "number" else v), []
    if k == "object":
        return (v, []) if isinstance(v, dict) else (None, [M.wrong_type(f)])
    if k == "input":
        if isinstance(v, str):
            return v, []
        if isinstance(v, list) and v and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in v
        ):
            return v, []
        return None, [M.wrong_type(f)]
    if k == "scale":
        if isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v):
            return (float(v[0]), float(v[1])), []
        return None, [M.wrong_type(f)]
    raise AssertionError(k)


def _rule_holds(rule: Rule, e: dict[str, Any]) -> bool:
    """The contract's cross-field rule over one typed event (see `Rule`)."""
    a = rule.args
    v = e[str(a[0])]
    if rule.test == "one_of":
        return v in a[1:]
    if rule.test == "present":
        return v is not None
    if rule.test == "non_empty":
        return bool(v)
    if rule.test == "less":
        return bool(v < e[str(a[1])])
    return v is None or bool(e[str(a[1])] <= v <= e[str(a[2])])


def check_event(et: EventType, obj: dict[str, Any]) -> list[str]:
    """Every reason `obj` breaks the contract of `et` (empty when valid)."""
    reasons: list[str] = []
    typed: dict[str, Any] = {}
    bad: set[str] = set()
    for f in et.fields:
        v = obj.get(f.name)
        if v is None:
            if f.required:
                reasons.append(M.missing(f))
                bad.add(f.name)
            typed[f.name] = f.default
            continue
        typed[f.name], errs = _check_value(f, v)
        if errs:
            reasons += errs
            bad.add(f.name)
    tag = typed.get("type")
    if tag is not None and tag != et.name:
        reasons.append(M.wrong_topic(et, tag))
    if et.rules and "kind" not in bad:
        scale = typed.get("scale") or DEFAULT_RATING_SCALE
        typed["scale_min"], typed["scale_max"] = scale
        for rule in et.rules:
            if rule.kind == typed["kind"] and not (set(rule.fields) & bad):
                if not _rule_holds(rule, typed):
                    reasons.append(rule.reason)
    return reasons


def validate_payload(et: EventType, payload: bytes | str | None, max_bytes: int | None = None) -> list[str]:
    obj, reasons = parse_payload(payload, max_bytes)
    return reasons if obj is None else check_event(et, obj)


# --------------------------------------------------------------------------------------------------- vectorized

_NUMERIC_JSON = "('BIGINT', 'UBIGINT', 'DOUBLE')"
_TRANSFORM_TYPE = {"id": "VARCHAR", "string": "VARCHAR", "text": "VARCHAR", "enum": "VARCHAR", "timestamp": "VARCHAR",
                   "number": "DOUBLE", "integer": "BIGINT", "object": "JSON", "input": "JSON", "scale": "JSON"}


def _field_sql(f: Field, i: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """([(column, typed expression)], [(condition, reason)]) for field `f`.

    Over `v` (the payload leniently transformed to the contract's types, one parse) and `t` (the JSON type of
    every field, one parse): a value only counts when its JSON type is the one the contract names.
    """
    v = f"v.{_ident(f.name)}"
    t = f"t[{i + 1}]"
    present = f"({t} IS NOT NULL AND {t} <> 'NULL')"
    k = f.kind
    cols: list[tuple[str, str]] = []
    checks: list[tuple[str, str]] = []
    if k in ("id", "string", "text", "enum", "timestamp"):
        ok = f"{t} = 'VARCHAR'" + (f" AND {v} <> ''" if k == "id" else "")
        val = f"CASE WHEN {t} = 'VARCHAR' THEN {v} END"
        checks.append((f"{present} AND NOT ({ok})", M.wrong_type(f)))
        if k == "timestamp":
            ts_ok = f"regexp_full_match({v}, {_q(RFC3339)}) AND TRY_CAST({v} AS TIMESTAMPTZ) IS NOT NULL"
            checks.append((f"{present} AND ({ok}) AND NOT ({ts_ok})", M.wrong_type(f)))
            cols.append((f.name, f"CASE WHEN {t} = 'VARCHAR' THEN TRY_CAST({v} AS TIMESTAMPTZ) END"))
        else:
            cols.append((f.name, val if f.default is None else f"coalesce({val}, {_q(str(f.default))})"))
        if f.max_length is not None:
            checks.append((f"{present} AND ({ok}) AND length({v}) > {f.max_length}", M.too_long(f)))
        if k == "enum":
            choices = "[" + ", ".join(_q(c) for c in f.choices) + "]"
            checks.append((f"{present} AND ({ok}) AND NOT list_contains({choices}, {v})", M.not_in(f)))
    elif k in ("number", "integer"):
        allowed = _NUMERIC_JSON if k == "number" else "('BIGINT', 'UBIGINT')"
        ok = f"{t} IN {allowed} AND {v} IS NOT NULL" + (f" AND isfinite({v})" if k == "number" else "")
        checks.append((f"{present} AND NOT ({ok})", M.wrong_type(f)))
        if f.minimum is not None:
            checks.append((f"{present} AND ({ok}) AND {v} < {f.minimum}", M.below(f)))
        typed = f"CASE WHEN {t} IN {allowed} THEN {v} END"
        cols.append((f.name, typed if f.default is None else f"coalesce({typed}, {f.default})"))
    elif k == "object":
        checks.append((f"{present} AND {t} <> 'OBJECT'", M.wrong_type(f)))
        cols.append((f.name, f"CASE WHEN {t} = 'OBJECT' THEN {v}::VARCHAR END"))
    elif k == "input":
        roles = f"json_type({v}, '$[*].role')"
        contents = f"json_type({v}, '$[*].content')"
        n = f"json_array_length({v})"
        msgs_ok = (f"{n} > 0 AND len(list_filter({roles}, lambda x: x = 'VARCHAR')) = {n} "
                   f"AND len(list_filter({contents}, lambda x: x = 'VARCHAR')) = {n}")
        checks.append((f"{present} AND NOT ({t} = 'VARCHAR' OR ({t} = 'ARRAY' AND {msgs_ok}))", M.wrong_type(f)))
        typed_msgs = f"json_transform({v}, '[{{\"role\":\"VARCHAR\",\"content\":\"VARCHAR\"}}]')"
        cols.append(("input_messages", f"CASE WHEN {t} = 'ARRAY' THEN {typed_msgs} END"))
        # The plain-text view of a chat input is what the user asked last: the last user message (or message).
        last_user = (f"coalesce(list_last(list_filter({typed_msgs}, lambda m: m.role = 'user')).content, "
                     f"list_last({typed_msgs}).content)")
        cols.append(("input", f"CASE WHEN {t} = 'VARCHAR' THEN {v}->>'$' WHEN {t} = 'ARRAY' THEN {last_user} END"))
    elif k == "scale":
        ends = f"json_type({v}, ['$[0]', '$[1]'])"
        lo_v, hi_v = f"TRY_CAST({v}->>'$[0]' AS DOUBLE)", f"TRY_CAST({v}->>'$[1]' AS DOUBLE)"
        ok = (f"{t} = 'ARRAY' AND json_array_length({v}) = 2 AND list_contains({list(_NUMERIC_JSON_T)}, {ends}[1]) "
              f"AND list_contains({list(_NUMERIC_JSON_T)}, {ends}[2]) AND isfinite({lo_v}) AND isfinite({hi_v})")
        checks.append((f"{present} AND NOT ({ok})", M.wrong_type(f)))
        lo, hi = DEFAULT_RATING_SCALE
        cols.append(("scale_min", f"CASE WHEN {present} AND {ok} THEN {lo_v} ELSE {lo} END"))
        cols.append(("scale_max", f"CASE WHEN {present} AND {ok} THEN {hi_v} ELSE {hi} END"))
    if f.required:
        checks.insert(0, (f"NOT {present}", M.missing(f)))
    return cols, checks


_NUMERIC_JSON_T = ("BIGINT", "UBIGINT", "DOUBLE")


def batch_sql(et: EventType, guarded: bool) -> str:
    """The query that validates `batch(_row, raw)`: typed columns, `extra`, and `reasons` (a list, empty if valid).

    Unguarded, it raises on the first malformed payload; the caller then reruns it `guarded`, which checks syntax
    first (one more parse per payload) so that a malformed payload is only a reason.

    Each check is computed once, as a boolean column (`_c<i>` per field check, `_r<j>` per cross-field rule), which
    the verdict, the reason texts and the rules then only refer to: written out inline, the feedback query was five
    times larger and cost about 0.1 s per run before reading a single row.
    """
    cols: list[tuple[str, str]] = []
    checks: list[tuple[str, str]] = []
    bad_fields: dict[str, str] = {}
    for i, f in enumerate(et.fields):
        c, ch = _field_sql(f, i)
        first = len(checks)
        cols += c
        checks += ch
        bad_fields[f.name] = " OR ".join(f"_c{first + j}" for j in range(len(ch))) or "false"
    checks.append((f'"type" IS NOT NULL AND "type" <> {_q(et.name)}', "__wrong_topic__"))
    transform = json.dumps({f.name: _TRANSFORM_TYPE[f.kind] for f in et.fields})
    paths = "[" + ", ".join(_q(f'$."{n}"') for n in et.field_names) + "]"
    known = "[" + ", ".join(_q(n) for n in et.field_names) + "]"
    strip_known = json.dumps({n: None for n in et.field_names})
    parse = [f"json_transform(raw, {_q(transform)}) AS v", f"json_type(raw, {paths}) AS t", "json_keys(raw) AS keys"]
    if guarded:
        parse = [f"CASE WHEN json_valid(raw) THEN {p.rsplit(' AS ', 1)[0]} END AS {p.rsplit(' AS ', 1)[1]}"
                 for p in parse]
    wrong_topic = f"'a ' || \"type\" || ' event was sent where {et.name} events belong'"
    reasons = [(f"_c{i}", wrong_topic if reason == "__wrong_topic__" else _q(reason))
               for i, (_, reason) in enumerate(checks)]
    # Rules read the typed columns by name (`value`, `scale_min`, ...) and skip a rule when a field it reads, or
    # `kind`, is already wrong: one reason per mistake.
    rules = []
    for j, rule in enumerate(et.rules):
        skip = " OR ".join(f"({bad_fields[n]})" for n in (*rule.fields, "kind"))
        rules.append(f"kind = {_q(rule.kind)} AND NOT ({skip}) AND NOT coalesce({rule.sql}, false) AS _r{j}")
        reasons.append((f"_r{j}", _q(rule.reason)))
    names = [_ident(name) for name, _ in cols if name != "type"]
    typed_cols = ",\n    ".join(f"{expr} AS {_ident(name)}" for name, expr in cols)
    check_cols = ",\n    ".join(f"{cond} AS _c{i}" for i, (cond, _) in enumerate(checks))
    invalid = f"WHEN NOT json_valid(raw) THEN [{_q(M.invalid_json)}]" if guarded else ""
    return f"""
WITH parsed AS (
  SELECT _row, raw, {", ".join(parse)} FROM batch
), typed AS (
  SELECT _row, raw, keys,
    {typed_cols},
    {check_cols}
  FROM parsed
), checked AS (
  SELECT *{"".join(", " + r for r in rules)} FROM typed
)
SELECT _row,
  {", ".join(names)},
  CASE WHEN NOT list_has_all({known}, keys) THEN json_merge_patch(raw, {_q(strip_known)})::VARCHAR END AS extra,
  CASE
    WHEN raw IS NULL THEN []
    {invalid}
    WHEN NOT regexp_matches(raw, '^[ \t\n\r]*[{{]') THEN [{_q(M.not_object)}]
    WHEN len(keys) <> len(list_distinct(keys)) THEN [{_q(M.duplicate_key)}]
    -- Most events are valid: one boolean pass decides that, and reason texts are built only for the rest.
    WHEN NOT ({" OR ".join(f"coalesce({c}, false)" for c, _ in reasons)}) THEN []
    ELSE list_filter([{", ".join(f"CASE WHEN {c} THEN {r} END" for c, r in reasons)}], lambda r: r IS NOT NULL)
  END AS reasons
FROM checked
"""


CHUNK_ROWS = 8_192
CHUNK_BYTES = 32 * 1024 * 1024
"""The fast path accepts or refuses a batch in chunks of at most this many rows and (but for a single payload)
bytes: one bad event sends only its chunk to the full validator."""


class BatchValidator:
    """Validates Arrow batches of raw payloads of one event type on a private DuckDB connection.

    Chunks of valid events take the fast path (`flywheel.schemas.fast_path`: Arrow types them, one query checks
    them); every other chunk is validated by the full query, which finds every reason. The fast path only ever
    accepts what the full query accepts, with the same typed values (tests hold it to that), so the path changes
    the speed, never the verdict. Not thread-safe: use one per thread.
    """

    def __init__(self, et: EventType, max_bytes: int, threads: int | None = None, fast: bool = True) -> None:
        self.et = et
        self.max_bytes = max_bytes
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        # A batch needs a few times its own size; cap DuckDB so a worker's memory stays bounded and predictable.
        self.con.execute("SET memory_limit = '1GB'")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self._full = batch_sql(et, guarded=False)
        self._guarded = batch_sql(et, guarded=True)
        self._fast_path = FastPath(et, RFC3339) if fast else None
        self._schema = self._query(self._full, _raw_table([], pa.array([], pa.string()))).schema
        self.rows_fast = 0
        """Rows the fast path accepted (the rest went through the full query)."""
        self.objects_cut = 0
        """`metadata` objects the fast path cut out of the payloads it read, instead of having Arrow parse them."""

    def validate(self, payloads: pa.Array | Sequence[bytes | None]) -> tuple[pa.Table, list[str | None]]:
        """Validate `payloads` (a binary array, or a list of bytes as a consumer hands them over). Returns the typed
        rows (row i is payload i) and, per row, the reason it is invalid joined with '; ' (None when valid). Rows
        with byte-level problems are null in the typed table."""
        values = payloads.to_pylist() if isinstance(payloads, pa.Array) else payloads
        try:
            sizes = np.fromiter(map(len, values), np.int64, len(values))
        except TypeError:  # a message without a value (a tombstone)
            sizes = np.fromiter((len(v or b"") for v in values), np.int64, len(values))
        chunks = _chunks(sizes)
        parts, full = self._validate_fast(values, sizes, chunks)
        pre: list[str | None] = [None] * len(values)
        if full:
            parts.append(self._validate_full(values, sizes, full, pre))
        out = pa.concat_tables(parts) if len(parts) != 1 else parts[0]
        # Chunks come back in any order, and DuckDB keeps a plain projection in scan order
        # (preserve_insertion_order): sort by row when needed, rather than assume.
        if not pc.all(pc.equal(out["_row"], pa.array(np.arange(out.num_rows, dtype=np.int64)))).as_py():
            out = out.sort_by("_row")
        # Reason texts are Python strings for the invalid rows only: a batch is mostly valid events.
        reasons = out.column("reasons")
        broken = pc.indices_nonzero(pc.fill_null(pc.greater(pc.list_value_length(reasons), 0), False)).to_pylist()
        for i, r in zip(broken, reasons.take(pa.array(broken, pa.int64())).to_pylist()):
            if pre[i] is None:
                pre[i] = "; ".join(r)
        return out.drop_columns(["_row", "reasons"]), pre

    def _validate_fast(self, values: Sequence[bytes | None], sizes: np.ndarray, chunks: list[tuple[int, int]]
                       ) -> tuple[list[pa.Table], list[tuple[int, int]]]:
        """The rows the fast path validated (one table, or none), and the [start, stop) chunks it left over."""
        if self._fast_path is None:
            return [], chunks
        read, full = [], []
        cut_before = self._fast_path.objects_cut
        for a, b in chunks:
            part = None
            chunk = values[a:b]
            if sizes[a:b].max(initial=0) <= self.max_bytes and None not in chunk:
                part = self._fast_path.read(self.con, chunk, sizes[a:b], a)  # type: ignore[arg-type]  # no None, just checked
            if part is None:
                full.append((a, b))
            else:
                read.append(part)
        self.objects_cut += self._fast_path.objects_cut - cut_before
        if not read:
            return [], full
        checked = self._fast_path.check(self.con, pa.concat_tables(read) if len(read) > 1 else read[0])
        keep = checked["_ok"]
        if not pc.all(keep).as_py():  # a value breaks the contract: its chunk goes to the full query for reasons
            starts = [a for a, _ in chunks]
            for row in pc.filter(checked["_row"], pc.invert(keep)).to_pylist():
                a, b = chunks[bisect.bisect_right(starts, row) - 1]
                if (a, b) not in full:
                    full.append((a, b))
                    keep = pc.and_(keep, pc.invert(pc.and_(pc.greater_equal(checked["_row"], a),
                                                           pc.less(checked["_row"], b))))
            full.sort()
            checked = checked.filter(keep)
        self.rows_fast += checked.num_rows
        accepted = checked.drop_columns(["_ok"]).append_column(
            "reasons", pa.ListArray.from_arrays(pa.array(np.zeros(checked.num_rows + 1, np.int32)),
                                                pa.array([], pa.string())))
        return [accepted.select(self._schema.names).cast(self._schema)], full

    def _validate_full(self, values: Sequence[bytes | None], sizes: np.ndarray, chunks: list[tuple[int, int]],
                       pre: list[str | None]) -> pa.Table:
        """Typed rows and reasons of the payloads in `chunks`, by the full query; byte-level reasons go to `pre`."""
        rows = [i for a, b in chunks for i in range(a, b)]
        kept: list[bytes | None] = []
        for i in rows:
            v = values[i]
            if v is None:
                pre[i] = M.no_value
            elif sizes[i] > self.max_bytes:
                pre[i] = M.oversized(int(sizes[i]), self.max_bytes)
                v = None
            kept.append(v)
        payloads = pa.array(kept, pa.binary())
        try:
            text = payloads.cast(pa.string())
        except pa.ArrowInvalid:
            clean: list[str | None] = []
            for i, v in zip(rows, kept):
                try:
                    clean.append(None if v is None else v.decode("utf-8"))
                except UnicodeDecodeError:
                    pre[i] = M.invalid_utf8
                    clean.append(None)
            text = pa.array(clean, pa.string())
        batch = _raw_table(rows, text)
        try:
            return self._query(self._full, batch)
        except duckdb.InvalidInputException:  # a malformed payload: rerun with syntax checks
            return self._query(self._guarded, batch)

    def _query(self, sql: str, batch: pa.Table) -> pa.Table:
        self.con.register("batch", batch)
        try:
            return self.con.sql(sql).to_arrow_table()
        finally:
            self.con.unregister("batch")


def _raw_table(rows: pa.Array | list[int], text: pa.Array) -> pa.Table:
    return pa.table({"_row": pa.array(rows, pa.int64()), "raw": text})


def _chunks(sizes: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of consecutive chunks of at most CHUNK_ROWS rows and (but for a single row) CHUNK_BYTES."""
    n = len(sizes)
    ends = np.cumsum(sizes, dtype=np.int64)
    bounds, start = [], 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        fits = int(np.searchsorted(ends, base + CHUNK_BYTES, side="right"))
        stop = max(start + 1, min(start + CHUNK_ROWS, fits))
        bounds.append((start, stop))
        start = stop
    return bounds or [(0, 0)]
