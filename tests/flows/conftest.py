"""Shared by the flow tests: Prefect in ephemeral mode, quiet and fast (see STACK-NOTES)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from flywheel.infra.testing.prefect_server import PrefectServer


@pytest.fixture(scope="session")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Quiet, fast Prefect settings (see STACK-NOTES), then the first (slow) flow call pays the migrations once."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    env = {"PREFECT_HOME": str(tmp_path_factory.mktemp("prefect")), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if k != "PREFECT_HOME" or "PREFECT_HOME" not in os.environ})
    try:
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` for the session (about 5-60 s to become healthy, see STACK-NOTES), stopped
    with its whole process group at the end. Clients point at it with `server.env` / `server.api_url`."""
    from flywheel.infra.testing.prefect_server import PrefectServer

    with PrefectServer(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server
