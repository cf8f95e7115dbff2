"""The offset-continuity check of the landing worker (streams/continuity.py), on its own: which batches pass, which
raise, and when a gap that does not heal is accepted."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flywheel.streams.continuity import Continuity, OffsetGap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def batch(*runs: tuple[int, int, int]) -> tuple[pa.Array, pa.Array]:
    """Partitions and offsets of messages: (partition, first offset, last offset) per run, in the order given."""
    ps, os = [], []
    for p, a, b in runs:
        ps += [p] * (b - a + 1)
        os += list(range(a, b + 1))
    return pa.array(ps, pa.int32()), pa.array(os, pa.int64())


def test_contiguous_batches_pass_and_move_the_expected_offset() -> None:
    c = Continuity()
    c.expect(("t", 0), 10)
    assert c.check("t", *batch((0, 10, 19), (1, 0, 4))) == []
    assert c.expected(("t", 0)) == 20
    assert c.expected(("t", 1)) == 5  # unknown before: the batch sets it
    assert c.check("t", *batch((1, 5, 9), (0, 20, 20))) == []
    assert (c.expected(("t", 0)), c.expected(("t", 1))) == (21, 10)


def test_a_hole_inside_the_first_batch_of_a_partition_raises_too() -> None:
    c = Continuity()  # nothing expected yet: the batch's first offset starts the partition
    with pytest.raises(OffsetGap) as gap:
        c.check("t", *batch((0, 0, 9), (0, 30, 39)))
    assert (gap.value.first_missing, gap.value.resumes_at) == (10, 30)


def test_a_skipped_batch_raises_with_its_offsets_and_records_nothing() -> None:
    c = Continuity()
    c.expect(("t", 0), 0)
    c.expect(("t", 1), 0)
    with pytest.raises(OffsetGap) as gap:
        c.check("t", *batch((1, 0, 9), (0, 0, 99), (0, 117, 150)))
    assert (gap.value.topic, gap.value.partition, gap.value.first_missing, gap.value.resumes_at) == ("t", 0, 100, 117)
    assert "offsets 100..116" in str(gap.value)
    assert (c.expected(("t", 0)), c.expected(("t", 1))) == (0, 0)  # the batch is read again: nothing moved


def test_a_batch_that_starts_past_the_expected_offset_raises() -> None:
    c = Continuity()
    c.expect(("t", 2), 40)
    with pytest.raises(OffsetGap) as gap:
        c.check("t", *batch((2, 57, 80)))
    assert (gap.value.first_missing, gap.value.resumes_at) == (40, 57)


def test_replays_below_the_expected_offset_and_duplicates_are_no_gap() -> None:
    c = Continuity()
    c.expect(("t", 0), 50)
    assert c.check("t", *batch((0, 30, 60), (0, 55, 70))) == []  # re-read after a seek back, out of order
    assert c.expected(("t", 0)) == 71
    assert c.check("t", *batch((0, 10, 20))) == []  # all replays: nothing moves
    assert c.expected(("t", 0)) == 71


def test_a_gap_that_persists_past_the_settle_time_is_accepted_once() -> None:
    clock = Clock()
    c = Continuity(settle_s=1.0, clock=clock)
    c.expect(("t", 0), 0)
    for _ in range(3):  # re-read three times within the settle time: still a gap
        with pytest.raises(OffsetGap):
            c.check("t", *batch((0, 0, 9), (0, 11, 20)))
        clock.now += 0.3
    clock.now += 0.2
    assert c.check("t", *batch((0, 0, 9), (0, 11, 20))) == [(("t", 0), 10, 11)]  # a transaction marker, say
    assert c.expected(("t", 0)) == 21
    c.expect(("t", 0), 0)
    with pytest.raises(OffsetGap):  # accepted once: the same offsets read again start over
        c.check("t", *batch((0, 0, 9), (0, 11, 20)))


def test_a_healed_gap_passes_without_waiting() -> None:
    clock = Clock()
    c = Continuity(settle_s=1.0, clock=clock)
    c.expect(("t", 0), 0)
    with pytest.raises(OffsetGap):
        c.check("t", *batch((0, 0, 9), (0, 20, 29)))
    assert c.check("t", *batch((0, 0, 29))) == []  # the skipped batch came back on the re-read
    assert c.expected(("t", 0)) == 30
