"""A lake whose filesystem fills up or turns read-only while the worker runs: the worker must keep running, stop
advancing the lake's offsets, say what is wrong (log line with the path and the fix, metric, stats), retry, and land
every event exactly once when the filesystem accepts writes again.

The lake lives on a tmpfs of a few MB mounted for the test. As root it is mounted here; as another user the test
runs itself again inside a private user and mount namespace (`unshare --user --map-root-user --mount`), where the
mount is allowed; where neither works (user namespaces disabled) it says so."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flywheel.config import Settings
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.metrics import IngestMetrics
from flywheel.warehouse.lake import Lake
from flywheel.warehouse.query import connect

from .conftest import Background

pytestmark = [pytest.mark.reliability, pytest.mark.broker]

_INSIDE = "FLYWHEEL_TEST_PRIVATE_MOUNTS"  # set only for the re-run inside the namespace (not a setting)


def _namespaces_work() -> bool:
    if os.geteuid() == 0 or shutil.which("unshare") is None:
        return os.geteuid() == 0
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


def _rerun_privately(request: pytest.FixtureRequest) -> bool:
    """As a user that is not root: run this test again in a private user + mount namespace; True when it did
    (and passed there)."""
    if not _MOUNTS:
        pytest.skip(_NO_MOUNTS)
    if os.geteuid() == 0:
        return False
    env = {**os.environ, _INSIDE: "1"}
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest", "-q",
                           "-p", "no:cacheprovider", "-m", "reliability", "-s", request.node.nodeid],
                          cwd=request.config.rootpath, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    print(proc.stdout[-1500:])
    return True


_MOUNTS = _namespaces_work()
_NO_MOUNTS = ("mounting a small tmpfs needs root or unprivileged user namespaces (`unshare --user --map-root-user "
              "--mount` failed here)")
# Marked only where the mount cannot be made: everywhere else a skip would fail the run.
needs_mounts = pytest.mark.cannot_run_here(reason=_NO_MOUNTS) if not _MOUNTS else pytest.mark.broker


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(fs: Path) -> Path:
    """Write a file until the filesystem has no byte left; return it."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            while True:
                fh.write(b"\0")
        except OSError:
            pass
    return filler


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _send(s: Settings, ids: list[str]) -> None:
    with FlywheelClient(s) as fw:
        for iid in ids:
            fw.log_inference(inference_id=iid, app="a", model="m", input="q " * 50, output="o " * 50)


def _metric(metrics: IngestMetrics, name: str) -> float:
    """The sum of the metric's samples over all its labels."""
    return sum(sample.value for family in metrics.registry.collect() for sample in family.samples
               if sample.name == name)


def _run_fault(tmp_path: Path, kafka_settings: Settings, caplog: pytest.LogCaptureFixture,
               break_fs: Callable[[Path], Callable[[], None]], expect: str) -> None:
    """Land 2,000 events, break the lake's filesystem, send 2,000 more, check the worker holds on, repair, check
    all 4,000 land exactly once."""
    caplog.set_level(logging.INFO, logger="flywheel.ingest")
    with _tmpfs(tmp_path / "fs", "6m") as fs:
        s = kafka_settings.replace(lake=str(fs / "lake"), flush_interval_s=0.3)
        metrics = IngestMetrics()
        worker = IngestWorker(s, metrics=metrics)
        background = Background()
        errors = background.errors
        thread = background.start(worker.run)
        try:
            _send(s, [f"before-{i}" for i in range(2000)])
            assert _wait(lambda: worker.stats.landed["inferences"] == 2000, 60), (worker.stats.landed, errors)
            lake = Lake(s.lake)
            tps = [(s.inference_topic, p) for p in range(s.partitions)]
            marks = lake.watermarks("inferences", tps, worker._topic_ids)
            repair = break_fs(fs)
            _send(s, [f"during-{i}" for i in range(2000)])
            assert _wait(lambda: bool(errors) or worker.stats.lake_faults >= 1, 30), worker.stats
            held = time.monotonic()
            time.sleep(4)  # long enough for several retries
            assert not errors, errors
            assert thread.is_alive()
            assert worker.stats.landed["inferences"] == 2000
            assert lake.watermarks("inferences", tps, worker._topic_ids) == marks  # the offsets did not advance
            assert worker.stats.lake_fault is not None and expect in worker.stats.lake_fault
            assert _metric(metrics, "flywheel_ingest_lake_unwritable") == 1
            problem = lake.write_problem(256 * 1024)  # what `flywheel status` shows (for a lake of MBs)
            assert problem is not None and ("MB free" if expect == "no space left" else expect) in problem, problem
            assert _metric(metrics, "flywheel_ingest_lake_write_failures_total") >= 1
            faults = [r.getMessage() for r in caplog.records if "cannot write the lake" in r.getMessage()]
            assert faults and str(fs / "lake") in faults[0] and expect in faults[0], faults
            repair()
            t0 = time.monotonic()
            assert _wait(lambda: worker.stats.landed["inferences"] == 4000, 60), (worker.stats, errors)
            print(f"{expect}: held {t0 - held:.1f} s, landed the 2,000 held events {time.monotonic() - t0:.1f} s "
                  f"after the repair; {worker.stats.lake_faults} failed attempts")
            # The commit thread counts the rows; the consuming thread clears the fault when it collects the batch.
            assert _wait(lambda: _metric(metrics, "flywheel_ingest_lake_unwritable") == 0, 10)
            assert lake.write_problem(256 * 1024) is None
            assert worker.stats.lake_fault is None
            assert any("the lake accepts writes again" in r.getMessage() for r in caplog.records)
        finally:
            worker.stop()
            thread.join(60)
        assert not errors, errors
        assert worker.stats.replayed == 0
        con = connect(s)
        assert con.execute("SELECT count(*), count(DISTINCT inference_id) FROM lake_inferences").fetchone() \
            == (4000, 4000)
        con.close()


@needs_mounts
def test_a_full_lake_holds_the_offsets_and_lands_everything_once_space_returns(
        request: pytest.FixtureRequest, tmp_path: Path, kafka_settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    if _rerun_privately(request):
        return

    def fill(fs: Path) -> Callable[[], None]:
        filler = _fill(fs)
        return lambda: filler.unlink()

    _run_fault(tmp_path, kafka_settings, caplog, fill, "no space left")


@needs_mounts
def test_a_read_only_lake_holds_the_offsets_and_lands_everything_once_writable_again(
        request: pytest.FixtureRequest, tmp_path: Path, kafka_settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    if _rerun_privately(request):
        return

    def read_only(fs: Path) -> Callable[[], None]:
        for _ in range(200):  # the kernel refuses (EBUSY) while a commit holds a file open for writing
            if subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True).returncode == 0:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"could not remount {fs} read-only")
        return lambda: subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True) and None

    _run_fault(tmp_path, kafka_settings, caplog, read_only, "read-only")
