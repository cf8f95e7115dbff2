"""A real local Prefect server (`prefect server start`) on a free port of 127.0.0.1, for tests and the demo.

It runs in its own process group with a private PREFECT_HOME and the quiet settings of STACK-NOTES; `stop()` ends
the whole group (the server starts workers of its own), so nothing outlives the `with` block.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

QUIET = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_LOGGING_LEVEL": "WARNING",
         "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrefectServer:
    """`with PrefectServer(home) as server:` a healthy server at `server.api_url`; `server.env` is what a client
    process needs (PREFECT_HOME, PREFECT_API_URL and the quiet settings)."""

    def __init__(self, home: Path, startup_timeout_s: float = 120.0) -> None:
        self.home = home
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.startup_timeout_s = startup_timeout_s
        self.env = {**QUIET, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api_url}
        self.log = home / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        env.pop("PREFECT_API_URL")  # the server itself must not look for another server
        prefect = Path(sys.executable).with_name("prefect")
        with open(self.log, "ab") as log:
            # Services stay on: the scheduler makes the scheduled runs, the triggers and actions services run
            # automations. The UI is not needed.
            self._proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                                           str(self.port), "--analytics-off", "--no-ui"], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self._proc.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"prefect server not healthy after {self.startup_timeout_s:g} s; see {self.log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc)

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads (it was started with `start_new_session=True`), SIGKILL what is left
    after `grace_s`."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            # the leader is gone; children in its group may not be
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        return
