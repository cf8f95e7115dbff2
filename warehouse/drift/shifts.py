"""What else changed inside an alerting segment between the two windows: the values of its categorical columns
(model version, prompt version, provider, ...) that are new or whose share of the segment's traffic moved. Shown
next to what moved, they are usually the cause a person looks for first (a new model version in all of the window,
a new prompt version in half of it)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.schemas.alerts import Alert, CategoricalShift
from flywheel.warehouse.drift.effects import NONE_LABEL, segment_levels

SHIFT_COLUMNS = ("model", "model_version", "prompt_template", "prompt_version", "provider")
"""The columns whose shares an alert reports, when the segment does not already fix them."""
MIN_NEW_SHARE = 0.01
"""A value absent from the reference is reported once it holds this share of the current window (below, one
stray request would name a "new" version)."""


def _shares(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> dict[str, float]:
    if len(rows) == 0:
        return {}
    values = pc.fill_null(pc.cast(column.take(pa.array(rows)), pa.string()), NONE_LABEL).to_pylist()
    return {v: n / len(rows) for v, n in Counter(values).items()}


def categorical_shifts(ref: pa.Table, cur: pa.Table, level: tuple[str, ...], ref_rows: np.ndarray,
                       cur_rows: np.ndarray, min_change: float) -> tuple[CategoricalShift, ...]:
    """The shifts of one segment (its rows `ref_rows` and `cur_rows`): per column of `SHIFT_COLUMNS` not in
    `level`, every value whose share changed by at least `min_change`, or that is new with at least
    `MIN_NEW_SHARE`; largest change first."""
    out = []
    for col in SHIFT_COLUMNS:
        if col in level or col not in ref.column_names or col not in cur.column_names:
            continue
        before, after = _shares(ref[col], ref_rows), _shares(cur[col], cur_rows)
        for value in before.keys() | after.keys():
            b, a = before.get(value, 0.0), after.get(value, 0.0)
            if abs(a - b) >= min_change or (b == 0 and a >= MIN_NEW_SHARE):
                out.append(CategoricalShift(col, value, round(b, 4), round(a, 4)))
    return tuple(sorted(out, key=lambda s: (-abs(s.after - s.before), s.column, s.value)))


def with_shifts(alerts: Sequence[Alert], ref: pa.Table, cur: pa.Table, min_change: float) -> list[Alert]:
    """`alerts` with the categorical shifts of their segments (`categorical_shifts`)."""
    if not alerts or ref.num_rows == 0 or cur.num_rows == 0:
        return list(alerts)
    levels = list(dict.fromkeys(tuple(a.level.split(",")) if a.level else () for a in alerts))
    segs = {s.level: s for s in segment_levels(ref, cur, levels)}
    out = []
    for a in alerts:
        level = tuple(a.level.split(",")) if a.level else ()
        s = segs[level]
        k = s.labels.index(a.segment) if a.segment in s.labels else -1
        shifts = categorical_shifts(ref, cur, level, np.flatnonzero(s.ref == k), np.flatnonzero(s.cur == k),
                                    min_change) if k >= 0 else ()
        out.append(dataclasses.replace(a, shifts=shifts))
    return out
