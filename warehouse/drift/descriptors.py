"""Per-inference text descriptors, computed offline and vectorized over Arrow arrays (no models, no downloads).

Why not regular expressions: on this machine DuckDB's and Arrow's RE2 paths ran at 30-50 MB/s over LLM outputs
(1M outputs of about 1.2 KB took 30-45 s per regex). Instead the UTF-8 bytes of a whole batch are classified at
once with a 256-entry lookup table in numpy and summed per row with `np.add.reduceat`, which costs a few ns per
byte, and only short prefixes go through a regex. What each descriptor means, exactly:

- `*_chars`: length in Unicode code points.
- `*_tokens`: the tokens the producer reported; when it reported none, estimated as chars / 4.
- `*_words`: runs of non-whitespace (ASCII whitespace) characters. CJK text without spaces counts as few words.
- `*_sentences`: `.`, `!` or `?` followed by whitespace, plus one for a non-empty text that does not end on one.
- `*_non_letter`: share of characters that are not letters. ASCII letters and every non-ASCII character count as
  letters (the latter is exact for CJK, Cyrillic, accented Latin; it misses non-ASCII punctuation such as curly
  quotes, a small bias that is the same in reference and current windows).
- `*_script`: the dominant script of the text by letter count: `latin` (no accented letters: mostly English),
  `latin-ext` (more than 2% accented Latin letters: es, de, fr, pt, ...), `cyrillic`, `cjk` (Han), `kana`,
  `hangul`, `arabic`, `other`, or `none` (no letters). A character-script heuristic, not a language model.
- `refusal`, `apology`: a refusal- or apology-like phrase in the first 200 characters of the output (English).
- `has_code`: a fenced code block (two ``` at least); `has_json`: the output is a JSON object/array or holds a
  ```json block;
  `has_link`: a URL (`://`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCRIPTS = ("none", "latin", "latin-ext", "cyrillic", "cjk", "kana", "hangul", "arabic", "other")

REFUSAL_RE = (r"(i'?m sorry, but|i am sorry, but|i cannot|i can'?t (help|assist|provide|do|answer|fulfil|comply)|"
              r"i can not|i'?m (not able|unable) to|i am (not able|unable) to|i won'?t be able|as an ai|"
              r"as a language model|i must decline|i'?m afraid i can'?t)")
APOLOGY_RE = r"(sorry|apologi[sz]e|my apologies)"
REFUSAL_PREFIX_CHARS = 200
"""Refusals and apologies are looked for in the leading characters only: that is where models put them."""

_SCRIPT_OF_BYTE = np.zeros(256, np.uint8)  # script code of a letter's first byte (0 = not a letter lead byte)
_SCRIPT_OF_BYTE[65:91] = 1
_SCRIPT_OF_BYTE[97:123] = 1
_SCRIPT_OF_BYTE[0xC3:0xCA] = 2   # U+00C0-U+027F: Latin-1 supplement and Latin extended (accented Latin)
_SCRIPT_OF_BYTE[0xCA:0xD0] = 8   # IPA, modifiers, combining marks, Greek: other
_SCRIPT_OF_BYTE[0xD0:0xD5] = 3   # U+0400-U+052F Cyrillic
_SCRIPT_OF_BYTE[0xD5:0xD8] = 8   # Armenian, Hebrew
_SCRIPT_OF_BYTE[0xD8:0xDC] = 7   # U+0600-U+06FF Arabic (and supplement)
_SCRIPT_OF_BYTE[0xDC:0xE3] = 8   # Syriac, Indic, Thai, ... (E0..E2 mixes Indic, Thai, punctuation)
_SCRIPT_OF_BYTE[0xE3] = 5        # U+3000-U+3FFF: CJK punctuation, Hiragana, Katakana
_SCRIPT_OF_BYTE[0xE4:0xEA] = 4   # U+4000-U+9FFF: CJK unified ideographs
_SCRIPT_OF_BYTE[0xEA:0xEE] = 6   # U+A000-U+DFFF: mostly Hangul syllables
_SCRIPT_OF_BYTE[0xEE:0x100] = 8  # private use, compatibility forms, emoji (4-byte)
# Per-row counts of the 8 script codes are packed into one uint64 (8 bits each), summed in one pass: a prefix of
# at most 255 characters cannot overflow a field, and differences of wrapped sums are exact modulo 2**64.
_SCRIPT_WEIGHT = np.where(_SCRIPT_OF_BYTE > 0,
                          np.left_shift(np.uint64(1), (8 * (_SCRIPT_OF_BYTE.astype(np.uint64) - 1)) % 64),
                          0).astype(np.uint64)
_CODE_NAME = {1: "latin", 3: "cyrillic", 4: "cjk", 5: "kana", 6: "hangul", 7: "arabic", 8: "other"}
SCRIPT_PREFIX_CHARS = 255
"""Scripts are judged on this many leading characters: enough to tell, and bounded cost on long outputs."""

CHUNK_BYTES = 1 << 18
"""Bytes classified per numpy step. Small enough to stay in cache: on this machine a comparison over a fresh
1.2 GB array cost 3.5 ns/byte (page faults), over 256 KB slices about 0.1 ns/byte."""

def _offsets_and_data(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy views of a (large_)string array's offsets and UTF-8 bytes, nulls as empty strings."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    if arr.type == pa.string_view():
        arr = arr.cast(pa.large_string())
    off_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], off_type)[arr.offset:arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return offsets, data


def _row_groups(offsets: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges [r0, r1) of about CHUNK_BYTES bytes each (at least one row)."""
    n = len(offsets) - 1
    r0 = 0
    while r0 < n:
        r1 = int(np.searchsorted(offsets, offsets[r0] + CHUNK_BYTES, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        yield r0, r1
        r0 = r1


def _sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per-row sums of `values` over [starts, ends) (relative positions; empty rows give 0)."""
    cs = np.empty(len(values) + 1, np.uint64)
    cs[0] = 0
    np.cumsum(values, out=cs[1:])
    return cs[ends] - cs[starts]


def _count_at(positions: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the (sorted, relative) byte `positions` fall in each row, rows ending at `ends`."""
    return np.bincount(np.searchsorted(ends, positions, side="right"), minlength=len(ends))[:len(ends)]


def text_stats(arr: pa.Array) -> dict[str, np.ndarray]:
    """chars, words, sentences, letters, fences (```), json_fences (```json), links (://) of every string
    (nulls count as empty)."""
    offsets, data = _offsets_and_data(arr)
    n = len(offsets) - 1
    out = {k: np.zeros(n, np.int32) for k in ("words", "sentences", "letters", "fences", "links", "json_fences")}
    for r0, r1 in _row_groups(offsets):
        b0, b1 = int(offsets[r0]), int(offsets[r1])
        if b1 == b0:
            continue
        d = data[b0:b1]
        nb = b1 - b0
        starts, ends = offsets[r0:r1] - b0, offsets[r0 + 1:r1 + 1] - b0
        nonempty = ends > starts
        s_ne = starts[nonempty]
        # dense counts: letters and word starts (a non-space after a space or at the start of its row)
        ws = d <= 32
        letter = ((d | np.uint8(0x20)) - np.uint8(97) < 26) | (d >= 0xC0)
        wstart = ~ws
        wstart[1:] &= ws[:-1]
        wstart[s_ne] = ~ws[s_ne]
        out["letters"][r0:r1][nonempty] = np.add.reduceat(letter, s_ne, dtype=np.int32)
        out["words"][r0:r1][nonempty] = np.add.reduceat(wstart, s_ne, dtype=np.int32)
        # sparse counts: find candidates, check their neighbours, assign them to rows
        last = np.zeros(nb, bool)
        last[ends[nonempty] - 1] = True
        cand = np.flatnonzero(((d == 46) | (d == 33) | (d == 63)) & ~last)  # . ! ? not ending the row
        cand = cand[ws[cand + 1]]
        out["sentences"][r0:r1] = _count_at(cand, ends)
        cand = np.flatnonzero(d[:-2] == 96)
        cand = cand[(d[cand + 1] == 96) & (d[cand + 2] == 96)]
        out["fences"][r0:r1] = _count_at(cand, ends)
        cand = cand[cand + 6 < nb]
        tail = d[cand[:, None] + np.arange(3, 7)] | np.uint8(0x20) if cand.size else np.zeros((0, 4), np.uint8)
        out["json_fences"][r0:r1] = _count_at(cand[(tail == np.frombuffer(b"json", np.uint8)).all(axis=1)], ends)
        cand = np.flatnonzero(d[:-2] == 58)
        cand = cand[(d[cand + 1] == 47) & (d[cand + 2] == 47)]
        out["links"][r0:r1] = _count_at(cand, ends)
    # the last sentence of a text counts whether or not it ends on a terminator
    out["sentences"] += (out["words"] > 0).astype(np.int32)
    out["chars"] = np.asarray(pc.fill_null(pc.utf8_length(arr), 0)).astype(np.int32)
    return out


def scripts(arr: pa.Array) -> np.ndarray:
    """Dominant script of each string's first `SCRIPT_PREFIX_CHARS` characters, as codes into `SCRIPTS`."""
    prefix = pc.utf8_slice_codeunits(arr, 0, SCRIPT_PREFIX_CHARS)
    offsets, data = _offsets_and_data(prefix)
    n = len(offsets) - 1
    packed = np.zeros(n, np.uint64)
    for r0, r1 in _row_groups(offsets):
        b0, b1 = int(offsets[r0]), int(offsets[r1])
        if b1 > b0:
            packed[r0:r1] = _sums(_SCRIPT_WEIGHT[data[b0:b1]], offsets[r0:r1] - b0, offsets[r0 + 1:r1 + 1] - b0)
    counts = np.stack([(packed >> np.uint64(8 * k)) & np.uint64(0xFF) for k in range(8)], axis=1).astype(np.int32)
    accented = counts[:, 1].copy()  # code 2 (accented Latin) sits in field 1
    counts[:, 0] += accented
    counts[:, 1] = 0
    best = counts.argmax(axis=1) + 1  # back to codes 1..8
    total = counts.sum(axis=1)
    out = np.zeros(n, np.int8)
    names = {name: i for i, name in enumerate(SCRIPTS)}
    for code, name in _CODE_NAME.items():
        out[best == code] = names[name]
    out[(best == 1) & (accented > 0.02 * np.maximum(total, 1))] = names["latin-ext"]
    out[total == 0] = names["none"]
    return out


def _matches(arr: pa.Array, pattern: str) -> np.ndarray:
    return np.asarray(pc.fill_null(pc.match_substring_regex(arr, pattern), False), dtype=bool)


def _as_float(col: pa.Array | pa.ChunkedArray, dtype: type = np.float64) -> np.ndarray:
    # always a copy: a zero-copy view would keep the whole exported batch (texts included) alive
    return np.array(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=dtype, copy=True)


def describe_batch(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Descriptors of one batch of inferences. Needs the columns `input`, `output`, `latency_ms`, `input_tokens`,
    `output_tokens`, `cost_usd`; every other column is carried through unchanged."""
    t = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    cols: dict[str, pa.Array | np.ndarray] = {}
    everything = pa.array(np.arange(t.num_rows, dtype=np.int64))
    for name in t.column_names:
        if name not in ("input", "output", "latency_ms", "input_tokens", "output_tokens", "cost_usd"):
            # Copied: a batch exported by DuckDB frees its memory (the texts too) only when no column of it is
            # referenced any more; keeping a slice of it would keep every batch's text alive (1.2 GB per 1M rows).
            cols[name] = t[name].take(everything)
    for side in ("input", "output"):
        arr = t[side].combine_chunks() if isinstance(t[side], pa.ChunkedArray) else t[side]
        st = text_stats(arr)
        chars = st["chars"]
        cols[f"{side}_chars"] = chars
        reported = _as_float(t[f"{side}_tokens"])
        cols[f"{side}_tokens"] = np.where(np.isnan(reported), np.ceil(chars / 4.0), reported).astype(np.float32)
        cols[f"{side}_words"] = st["words"]
        cols[f"{side}_sentences"] = st["sentences"]
        cols[f"{side}_non_letter"] = np.where(chars > 0, 1.0 - st["letters"] / np.maximum(chars, 1),
                                              np.nan).astype(np.float32)
        cols[f"{side}_script"] = pa.DictionaryArray.from_arrays(pa.array(scripts(arr)), pa.array(SCRIPTS))
        if side == "output":
            head = pc.utf8_lower(pc.utf8_slice_codeunits(arr, 0, REFUSAL_PREFIX_CHARS))
            cols["refusal"] = _matches(head, REFUSAL_RE)
            cols["apology"] = _matches(head, APOLOGY_RE)
            cols["has_code"] = st["fences"] >= 2
            # trim only the ends: trimming whole outputs would copy all their text
            head = pc.utf8_ltrim_whitespace(pc.utf8_slice_codeunits(arr, 0, 16))
            tail = pc.utf8_rtrim_whitespace(pc.utf8_slice_codeunits(arr, -16))
            obj = pc.and_(pc.starts_with(head, "{"), pc.ends_with(tail, "}"))
            lst = pc.and_(pc.starts_with(head, "["), pc.ends_with(tail, "]"))
            cols["has_json"] = np.asarray(pc.fill_null(pc.or_(obj, lst), False), dtype=bool) | (st["json_fences"] > 0)
            cols["has_link"] = st["links"] > 0
    cols["latency_ms"] = _as_float(t["latency_ms"], np.float32)
    cols["cost_usd"] = _as_float(t["cost_usd"], np.float64)
    return pa.table({k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)) for k, v in cols.items()})


def describe_batches(batches: Iterable[pa.RecordBatch], threads: int = 2) -> pa.Table | None:
    """Descriptors of a stream of batches, `threads` batches at a time. Only the descriptor columns are kept, so
    memory is bounded by the batches in flight, not by the window's text.

    Threads, not processes: the work is many small numpy/Arrow calls that contend for the GIL, but worker
    processes were slower still here (1M outputs: 15 s with 2 threads, 27 s with 2 spawned processes, which pay
    for shipping every batch's text across).
    """
    out: list[pa.Table] = []
    width = max(threads, 1)
    with ThreadPoolExecutor(max_workers=width) as pool:
        pending: list[Future[pa.Table]] = []
        for batch in batches:
            pending.append(pool.submit(describe_batch, batch))
            if len(pending) > width:
                out.append(pending.pop(0).result())
        out.extend(f.result() for f in pending)
    out = [t for t in out if t.num_rows]
    if not out:
        return None
    return pa.concat_tables(out, promote_options="permissive")


def chunks(table: pa.Table, rows: int) -> Iterator[pa.RecordBatch]:
    for b in table.to_batches(max_chunksize=rows):
        yield b
