"""Quality windows cover the stream without gaps or overlaps while commits and runs interleave."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import duckdb
import pytest
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.infra.testing.land import to_rows
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.quality.gates import QualityError, run_quality, runs_path
from flywheel.warehouse.quality.settings import QualitySettings

COMMITTERS = 3
COMMITS_EACH = 20
ROWS_PER_COMMIT = 4


def _events(tag: str, n: int) -> list[dict[str, object]]:
    ts = (datetime.now(timezone.utc) - timedelta(seconds=5)).isoformat()
    return [{"inference_id": f"{tag}-{k}", "timestamp": ts, "app": "a", "model": "m", "input": "q",
             "output": f"answer {k}", "latency_ms": 10.0, "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.0}
            for k in range(n)]


def _committer(settings: Settings, worker: int, seed: int, errors: list[BaseException]) -> None:
    """Lands batches as the worker's pipeline does: a batch is prepared (and, today, stamped), then committed a
    moment later by another stage, while quality runs read the lake."""
    rnd = random.Random(seed)
    lake = Lake(settings.lake)
    try:
        for c in range(COMMITS_EACH):
            offset = (worker * COMMITS_EACH + c) * ROWS_PER_COMMIT
            rows = to_rows(_events(f"w{worker}-c{c}", ROWS_PER_COMMIT), start_offset=offset,
                           topic_prefix=f"w{worker}")["inferences"]
            time.sleep(rnd.uniform(0.02, 0.15))  # prepared, waiting for the commit stage
            lake.commit("inferences", rows, {})
    except BaseException as exc:  # noqa: BLE001 -- re-raised by the test thread
        errors.append(exc)


# Many scheduled runs over a growing lake (~27 s quiet); the next test keeps the window bookkeeping in `make test`.
@pytest.mark.reliability
def test_every_landed_row_is_checked_by_exactly_one_scheduled_run(settings: Settings) -> None:
    Lake(settings.lake).ensure()
    q = QualitySettings()
    run_quality(settings, q, tables=["inferences"], report=False)  # before any commit (and GX is warm after it)
    runs = 1
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_committer, args=(settings, w, 100 + w, errors)) for w in range(COMMITTERS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        run_quality(settings, q, tables=["inferences"], report=False)  # scheduled: from the previous run's end
        runs += 1
    for t in threads:
        t.join()
    assert not errors, errors
    run_quality(settings, q, tables=["inferences"], report=False)  # the run after the last commit
    runs += 1

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("runs", DeltaTable(str(runs_path(settings))).to_pyarrow_dataset())
    con.register("landed", DeltaTable(str(Lake(settings.lake).path("inferences"))).to_pyarrow_dataset())
    windows = con.execute("SELECT DISTINCT run_id, window_start, window_end, rows FROM runs "
                          "ORDER BY window_start, window_end").fetchall()
    assert len(windows) == runs and runs > COMMITTERS  # the runs did interleave with the commits
    # Consecutive: each window starts where the previous one ended.
    assert all(a[2] == b[1] for a, b in zip(windows, windows[1:]))
    total = con.execute("SELECT count(*) FROM landed").fetchone()[0]
    assert total == COMMITTERS * COMMITS_EACH * ROWS_PER_COMMIT
    # Each landed row lies in exactly one run's window...
    per_row = Counter(dict(con.execute("""
        SELECT l.inference_id, count(w.run_id) FROM landed l
        LEFT JOIN (SELECT DISTINCT run_id, window_start, window_end FROM runs) w
          ON l._ingested_at >= w.window_start AND l._ingested_at < w.window_end
        GROUP BY ALL""").fetchall()))
    unchecked = sorted(i for i, n in per_row.items() if n == 0)
    twice = sorted(i for i, n in per_row.items() if n > 1)
    assert (len(unchecked), len(twice)) == (0, 0), f"in no window {unchecked}, in several {twice}"
    # ... and was there when that run read it: no window gained rows after its run, so the runs together
    # checked every landed row once.
    now_in = {w[0]: con.execute("SELECT count(*) FROM landed WHERE _ingested_at >= $s AND _ingested_at < $e",
                                {"s": w[1], "e": w[2]}).fetchone()[0] for w in windows}
    gained = {w[0]: now_in[w[0]] - w[3] for w in windows if now_in[w[0]] != w[3]}
    checked = sum(w[3] for w in windows)
    assert (checked, gained) == (total, {}), f"{total - checked} of {total} landed rows never checked"


def test_a_batch_prepared_before_a_run_and_committed_after_it_is_checked_by_the_next_run(settings: Settings) -> None:
    lake = Lake(settings.lake)
    lake.ensure()
    q = QualitySettings()
    lake.commit("inferences", to_rows(_events("a", 5), start_offset=0)["inferences"], {})
    late = to_rows(_events("b", 5), start_offset=5)["inferences"]  # prepared (stamped) now, committed below
    first = run_quality(settings, q, tables=["inferences"], report=False).suite("inferences")
    lake.commit("inferences", late, {})
    second = run_quality(settings, q, tables=["inferences"], report=False).suite("inferences")
    assert (first.rows, second.rows) == (5, 5)
    assert second.window_start == first.window_end
    again = run_quality(settings, q, since=first.window_start, until=first.window_end, tables=["inferences"],
                        report=False).suite("inferences")
    assert again.rows == 5  # the ended window did not gain the late batch
    with pytest.raises(QualityError, match="window ends in the future"):
        run_quality(settings, q, until=datetime.now(timezone.utc) + timedelta(hours=1), report=False)
