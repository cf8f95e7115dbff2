"""flywheel.infra.kafka without a broker: its configuration and what it says when it cannot run here. The real
broker lands events in tests/streams/test_real_kafka.py (the reliability tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.infra import kafka


def test_the_configuration_is_a_single_node_kraft_broker_and_controller(tmp_path: Path) -> None:
    props = dict(line.split("=", 1) for line in kafka.server_properties(9092, 9093, tmp_path).splitlines() if line)
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:9093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"


def test_a_cluster_id_is_a_kafka_uuid() -> None:
    ids = {kafka._cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_without_java_it_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kafka.KafkaUnavailable, match="needs Java 17 or newer .* apt-get install openjdk-17"):
        with kafka.kafka():
            pass


def test_without_maven_it_says_what_to_install_or_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(kafka.KafkaUnavailable, match=r"Maven \(`mvn`\).* apt-get install maven.*--libs"):
        kafka.jars(cache=tmp_path / "cache")


def test_libs_without_kafka_jars_are_refused(tmp_path: Path) -> None:
    with pytest.raises(kafka.KafkaUnavailable, match="holds no kafka_2.13"):
        with kafka.kafka(libs=tmp_path):
            pass


def test_resolved_jars_are_reused_without_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "kafka-9.9.9"
    cache.mkdir()
    (cache / ".complete").write_text("9.9.9")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn: a complete cache needs none
    assert kafka.jars("9.9.9", cache) == cache
