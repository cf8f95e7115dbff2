"""`flywheel broker start|stop|status` on a real embedded broker."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from flywheel.cli import main
from flywheel.infra import broker


def _run(home: Path, port: int, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args), env={"FLYWHEEL_HOME": str(home), "FLYWHEEL_BROKER_PORT": str(port),
                                                    "FLYWHEEL_KAFKA_BOOTSTRAP": ""})
    return res.exit_code, res.output


def test_start_status_stop(tmp_path: Path) -> None:
    port = broker.free_port()
    code, out = _run(tmp_path, port, "broker", "status")
    assert code == 1 and "not running" in out
    code, out = _run(tmp_path, port, "broker", "start")
    try:
        assert code == 0, out
        assert f"started the embedded broker on 127.0.0.1:{port}" in out
        assert "created topics flywheel.inference, flywheel.feedback, flywheel.deadletter" in out
        assert (tmp_path / "broker" / "tansu.pid").exists()
        code, out = _run(tmp_path, port, "broker", "start")
        assert code == 0 and f"a broker is already running on 127.0.0.1:{port}" in out
        code, out = _run(tmp_path, port, "broker", "status")
        assert code == 0 and "running (embedded, pid" in out
    finally:
        code, out = _run(tmp_path, port, "broker", "stop")
    assert code == 0 and "stopped the embedded broker" in out
    assert not broker.reachable("127.0.0.1", port)
    code, out = _run(tmp_path, port, "broker", "stop")
    assert code == 0 and "no embedded broker was running" in out


def test_commands_that_need_a_broker_say_how_to_start_one(tmp_path: Path) -> None:
    port = broker.free_port()
    events = tmp_path / "e.jsonl"
    events.write_text('{"inference_id": "a"}\n')
    code, out = _run(tmp_path, port, "send", str(events))
    assert code == 1
    assert "Error: no Kafka broker answered at 127.0.0.1" in out and "flywheel broker start" in out
