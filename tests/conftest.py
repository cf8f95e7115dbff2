"""Shared fixtures: real parts only. One embedded broker for the session; a fresh FLYWHEEL_HOME per test."""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")

from flywheel.config import Settings  # noqa: E402
from flywheel.infra import broker as embedded  # noqa: E402

if TYPE_CHECKING:
    from flywheel.infra.testing.s3 import S3Server


@pytest.fixture(scope="session")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An embedded Tansu broker on a free port, for the whole session."""
    home = tmp_path_factory.mktemp("broker-home")
    settings = Settings(home=home, broker_port=embedded.free_port())
    embedded.start(settings)
    try:
        yield settings.broker_port
    finally:
        # Kafka clients that tests left for the garbage collector go before the broker does: after it, each would
        # log a refused connection every second until the process ends, burying the test summary.
        gc.collect()
        embedded.stop(settings)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a test that needs no broker: a private FLYWHEEL_HOME."""
    return Settings(home=tmp_path / "home")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1 for the session (each test gets its own bucket)."""
    from flywheel.infra.testing.s3 import moto_s3  # moto is slow to import: only for the tests that use it

    with moto_s3() as server:
        yield server


@pytest.fixture
def s3_settings(settings: Settings, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` with the lake in a fresh bucket on moto; its keys in the AWS_* variables, as a user's would be."""
    from flywheel.infra.testing.s3 import CREDENTIALS

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server.lake(settings)


@pytest.fixture
def kafka_settings(tmp_path: Path, broker_port: int) -> Settings:
    """Settings on the session broker with topics of their own (a unique prefix) and a unique consumer group, so
    tests never see each other's events."""
    tag = uuid.uuid4().hex[:8]
    return Settings(home=tmp_path / "home", broker_port=broker_port, topic_prefix=f"t{tag}",
                    ingest_group=f"g{tag}", partitions=2, flush_interval_s=0.5)


# A skipped test silently tests less on one machine than on another (it once took the drift tests on every clone
# without ../shared): a skip fails the run unless the test says why it cannot run here.
_ALLOWED = "cannot_run_here"


def _unexpected(report: pytest.CollectReport | pytest.TestReport, allowed: bool) -> None:
    if report.skipped and not allowed and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped without @pytest.mark.{_ALLOWED}(reason=...): {report.longrepr}\n"
                           f"make it run here, or mark it with the reason it cannot")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    marker = item.get_closest_marker(_ALLOWED)
    if marker is not None and not (marker.kwargs.get("reason") or marker.args):
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{_ALLOWED} needs reason=...")
    _unexpected(outcome.get_result(), marker is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    # a module-level skip (importorskip, pytest.skip(allow_module_level=True)) is never an allowed one here
    _unexpected(outcome.get_result(), False)
