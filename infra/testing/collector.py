"""A collector served by uvicorn in a thread on 127.0.0.1, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from flywheel.config import Settings
from flywheel.streams.collector.app import create_app
from flywheel.streams.collector.settings import CollectorSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(settings: Settings, collector: CollectorSettings, timeout: float = 20.0) -> Iterator[str]:
    """Serve the collector on a free port; yields its base URL (`http://127.0.0.1:PORT`) once it listens, and
    stops it (waiting for in-flight requests and the producer's flush) on exit."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, collector), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="collector", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the collector did not start on 127.0.0.1:{port} within {timeout:g}s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
