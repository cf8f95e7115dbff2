"""Shared fixtures: real parts only. One embedded broker for the session; a fresh FLYWHEEL_HOME per test."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")

from flywheel.config import Settings  # noqa: E402
from flywheel.infra import broker as embedded  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An embedded Tansu broker on a free port, for the whole session."""
    home = tmp_path_factory.mktemp("broker-home")
    settings = Settings(home=home, broker_port=embedded.free_port())
    embedded.start(settings)
    try:
        yield settings.broker_port
    finally:
        embedded.stop(settings)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a test that needs no broker: a private FLYWHEEL_HOME."""
    return Settings(home=tmp_path / "home")


@pytest.fixture
def kafka_settings(tmp_path: Path, broker_port: int) -> Settings:
    """Settings on the session broker with topics of their own (a unique prefix) and a unique consumer group, so
    tests never see each other's events."""
    tag = uuid.uuid4().hex[:8]
    return Settings(home=tmp_path / "home", broker_port=broker_port, topic_prefix=f"t{tag}",
                    ingest_group=f"g{tag}", partitions=2, flush_interval_s=0.5)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
