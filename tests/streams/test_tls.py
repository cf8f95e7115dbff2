"""Every Kafka client of flywheel over TLS, configured from the environment only: a TLS terminator (a throwaway CA's
certificate, from trustme) in front of a dedicated embedded broker that advertises the terminator's address. The SDK
produces, the collector accepts, the landing worker lands, live signals read; a client without the CA is refused.

SASL is not tested over the wire: the embedded broker (Tansu 0.6) serves no SASL. Its settings are checked at the
config level, per client library (test_security.py)."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from flywheel.config import Settings
from flywheel.environment import Environment
from flywheel.errors import BrokerUnavailable
from flywheel.infra.testing.traffic import joined
from flywheel.infra import broker as embedded
from flywheel.infra.testing.collector import serving
from flywheel.infra.testing.tls import Terminator
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.topics import ensure_topics
from flywheel.warehouse.query import connect

pytestmark = pytest.mark.reliability

KEY = "tls-test-key-0123456789"


@dataclass(frozen=True)
class TlsCluster:
    env: dict[str, str]
    """FLYWHEEL_* variables of a client that reaches the broker through the terminator, with the CA."""
    terminator: Terminator


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[TlsCluster]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    broker = Settings(home=tmp_path / "broker", broker_port=embedded.free_port())
    terminator = Terminator(server, broker.broker_port).start()
    embedded.start(broker, advertised=f"127.0.0.1:{terminator.port}")
    tag = uuid.uuid4().hex[:8]
    env = {"FLYWHEEL_HOME": str(tmp_path / "home"), "FLYWHEEL_KAFKA_BOOTSTRAP": f"127.0.0.1:{terminator.port}",
           "FLYWHEEL_KAFKA_SECURITY_PROTOCOL": "SSL", "FLYWHEEL_KAFKA_SSL_CA_FILE": str(ca_file),
           "FLYWHEEL_TOPIC_PREFIX": f"tls{tag}", "FLYWHEEL_INGEST_GROUP": f"g{tag}", "FLYWHEEL_PARTITIONS": "2",
           "FLYWHEEL_FLUSH_INTERVAL_S": "0.5", "FLYWHEEL_COLLECTOR_API_KEYS": KEY,
           "FLYWHEEL_SIGNALS_GROUP": f"sig{tag}"}
    try:
        yield TlsCluster(env, terminator)
    finally:
        import gc

        gc.collect()  # clients left to the collector go before the broker (see tests/conftest.py)
        embedded.stop(broker)
        terminator.stop()


def _event(i: int) -> dict[str, object]:
    return {"app": "support-bot", "model": "m", "input": f"q{i}", "output": f"a{i}", "latency_ms": 10}


def test_every_client_works_over_tls_with_the_ca_from_the_environment(tls_cluster: TlsCluster) -> None:
    env = Environment.load(tls_cluster.env)
    s = env.core
    assert s.kafka_security_protocol == "SSL" and not s.uses_embedded_broker
    ensure_topics(s)  # the admin client, over TLS
    with FlywheelClient(s, strict=True) as sdk:
        sdk_ids = [sdk.log_inference(**_event(i)) for i in range(50)]  # type: ignore[arg-type]
    with serving(s, env.collector) as base:
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = httpx.post(f"{base}/v1/inference", json={**_event(99), "inference_id": "via-collector",
                                                      "timestamp": "2026-12-01T12:00:00+00:00"},
                       headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 202, r.text
    stats = IngestWorker(s).run(until_idle=2)
    assert stats.landed["inferences"] == 51
    con = connect(s)
    try:
        landed = {row[0] for row in con.sql("SELECT inference_id FROM inferences").fetchall()}
    finally:
        con.close()
    assert landed == {*sdk_ids, "via-collector"}

    # Live signals (faust on aiokafka) join over TLS and read what the SDK sends after that.
    from flywheel.streams.metrics import SignalMetrics
    from flywheel.streams.signals import make_app
    from flywheel.warehouse.alerts.outbox import Outbox

    metrics = SignalMetrics()
    app = make_app(s, env.signals, env.alerts, Outbox(Path(tls_cluster.env["FLYWHEEL_HOME"]) / "outbox.sqlite"),
                   metrics=metrics, broker_session_timeout=6, broker_rebalance_timeout=6,
                   broker_heartbeat_interval=1)

    def read() -> float:
        return metrics.events.labels(s.inference_topic)._value.get()  # type: ignore[no-any-return]

    async def signals() -> float:
        await app.start()
        try:
            await joined(app, over=" over TLS")
            deadline = time.monotonic() + 30
            while read() < 20 and time.monotonic() < deadline:  # "latest": keep sending until it reads
                with FlywheelClient(s, strict=True) as sdk:
                    for i in range(10):
                        sdk.log_inference(**_event(i))  # type: ignore[arg-type]
                await asyncio.sleep(0.5)
            return read()
        finally:
            await app.stop()

    assert asyncio.run(signals()) >= 20
    assert tls_cluster.terminator.connections > 0


def test_a_client_without_the_ca_or_without_tls_is_refused(tls_cluster: TlsCluster) -> None:
    no_ca = {k: v for k, v in tls_cluster.env.items() if k != "FLYWHEEL_KAFKA_SSL_CA_FILE"}
    s = Environment.load(no_ca).core  # TLS with the system's CAs, which never signed the terminator's certificate
    before = tls_cluster.terminator.connections
    with pytest.raises(BrokerUnavailable):
        ensure_topics(s, timeout=5)  # librdkafka
    with pytest.raises(BrokerUnavailable):
        FlywheelClient(s, strict=True, bootstrap_timeout_ms=3000)  # kafka-python
    assert tls_cluster.terminator.connections == before, "an untrusted handshake reached the broker"
    plaintext = Environment.load({k: v for k, v in no_ca.items() if k != "FLYWHEEL_KAFKA_SECURITY_PROTOCOL"}).core
    with pytest.raises(BrokerUnavailable):
        ensure_topics(plaintext, timeout=5)
    assert tls_cluster.terminator.connections == before
