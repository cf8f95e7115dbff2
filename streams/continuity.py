"""Offsets a broker skipped: every offset of a partition reaches the lake, or is known not to hold data.

A Kafka partition's offsets are contiguous but for control records (transaction markers), aborted transactions
and compaction, so a consumer legitimately sees gaps there. The embedded broker (Tansu 0.6) can also skip data: it
gives a batch its offsets before it writes it, and a fetch returns the batches written by then from the requested
offset on. A consumer reading at the tail of a partition two producers write to (the collector and an SDK, say)
can be handed the second producer's batch before the first one's is written, and moves past the first for good.
Measured here: a tailing consumer missed 17 of 207,000 messages in 30 s with three producers on three
partitions, all of which a later read from the beginning found in place; the landing worker, 10 of 210,870. The
90 s soak (tests/streams/test_soak.py) came up 32 and 73 inferences short in two earlier runs, one producer batch
each, which fits (their offsets were not recorded then).

`Continuity` keeps, per partition, the next offset the landing worker expects, and checks each batch's offsets
against it (one Arrow group-by: cheap). A batch that skips offsets raises `OffsetGap`: the worker lands nothing of
it, reads its partitions again from the lake's watermarks, and the skipped batch, written by then, comes back. A
gap that is still there after `GAP_SETTLE_S` of re-reading holds no data a consumer can see (a transaction marker,
say): it is accepted, logged with its offsets and counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from flywheel.errors import FlywheelError

TP = tuple[str, int]

GAP_SETTLE_S = 1.0
"""How long a gap must persist, re-read after re-read, before it is taken for offsets without data. Tansu writes
the batch it skipped within milliseconds of giving it its offsets; a transaction marker never comes back."""

GAP_RETRY_S = 0.1
"""How long the worker waits before it reads a partition again after a gap."""


class OffsetGap(FlywheelError):
    """A batch skipped offsets of a partition: `first_missing` up to `resumes_at` (the next offset it held).
    Retryable: reading the partition again from the lake's watermark brings the skipped batch back."""

    retryable = True

    def __init__(self, topic: str, partition: int, first_missing: int, resumes_at: int, waited: float) -> None:
        self.topic, self.partition, self.first_missing, self.resumes_at, self.waited = (
            topic, partition, first_missing, resumes_at, waited)
        super().__init__(f"{topic}[{partition}]: the broker skipped offsets {first_missing}..{resumes_at - 1} "
                         f"(it answered with offset {resumes_at} next); reading the partition again"
                         + (f" ({waited:.1f} s since first seen)" if waited else ""))


class Continuity:
    """The next offset expected per partition, and the gaps seen but not yet settled. `expect` is called from the
    consuming thread while no batch is being prepared; `check` from the preparing threads, one topic each."""

    def __init__(self, settle_s: float = GAP_SETTLE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self._next: dict[TP, int] = {}
        self._seen: dict[tuple[TP, int, int], float] = {}
        self._lock = threading.Lock()

    def expect(self, tp: TP, offset: int | None) -> None:
        """The partition is read from `offset` on (None: unknown, its next batch sets it)."""
        if offset is None or offset < 0:
            self._next.pop(tp, None)
        else:
            self._next[tp] = offset

    def expected(self, tp: TP) -> int | None:
        return self._next.get(tp)

    def check(self, topic: str, partitions: pa.Array, offsets: pa.Array) -> list[tuple[TP, int, int]]:
        """Check one topic's messages of a batch (their partitions and offsets, in any order, replays included).
        Raises `OffsetGap` for the first unsettled gap (nothing is recorded then: the batch is read again);
        otherwise moves each partition's expected offset past the batch and returns the gaps accepted as settled,
        as (topic-partition, first missing offset, next offset held)."""
        agg = pa.table({"p": partitions, "o": offsets}).group_by("p").aggregate(
            [("o", "min"), ("o", "max"), ("o", "count_distinct")])
        moves: dict[TP, int] = {}
        accepted: list[tuple[TP, int, int]] = []
        for p, lo, hi, n in zip(*(agg[c].to_pylist() for c in ("p", "o_min", "o_max", "o_count_distinct"))):
            tp = (topic, p)
            want = self._next.get(tp, lo)  # unknown: the batch's first offset starts the partition
            if hi >= want and not (lo == want and n == hi - lo + 1):
                accepted += self._gaps(tp, want, partitions, offsets)
            if hi >= want:
                moves[tp] = hi + 1
        self._next.update(moves)
        return accepted

    def _gaps(self, tp: TP, want: int, partitions: pa.Array, offsets: pa.Array) -> list[tuple[TP, int, int]]:
        """The gaps of partition `tp` at or after `want`: raise for the first one not yet settled."""
        held = offsets.to_numpy()[partitions.to_numpy() == tp[1]]
        present = np.concatenate(([want - 1], np.unique(held[held >= want])))
        holes = np.flatnonzero(np.diff(present) > 1)
        now = self.clock()
        settled = []
        with self._lock:
            for i in holes:
                gap = (tp, int(present[i]) + 1, int(present[i + 1]))
                first = self._seen.setdefault(gap, now)
                if now - first < self.settle_s:
                    if len(self._seen) > 10_000:  # gaps never seen again (the broker healed them) pile up
                        self._seen = {k: v for k, v in self._seen.items() if now - v < 60 * self.settle_s}
                    raise OffsetGap(tp[0], tp[1], gap[1], gap[2], now - first)
                settled.append(gap)
            for gap in settled:
                self._seen.pop(gap, None)
        return settled
