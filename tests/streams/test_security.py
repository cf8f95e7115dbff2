"""Kafka TLS and SASL settings: read once from the environment, checked, and carried by every client flywheel builds
(the SDK on kafka-python, the landing worker, collector, topics, releases and status on librdkafka, signals on faust),
with their secrets kept out of reprs, errors and `flywheel config`. Over a real TLS connection: test_tls.py."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from flywheel.config import Settings
from flywheel.environment import Environment
from flywheel.errors import BrokerUnavailable, ConfigError
from flywheel.streams.client import FlywheelClient
from flywheel.streams.ingest import IngestWorker
from flywheel.streams.security import OidcTokens, faust_credentials, kafka_python_config, librdkafka_config

PASSWORD = "pw-do-not-print-4711"
CLIENT_SECRET = "oidc-secret-do-not-print-0815"


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def _env(home: Path, **extra: str) -> dict[str, str]:
    # nothing listens on ports 1 and 2: no client here connects, and no name needs resolving
    return {"FLYWHEEL_HOME": str(home), "FLYWHEEL_KAFKA_BOOTSTRAP": "127.0.0.1:1,127.0.0.1:2",
            **{f"FLYWHEEL_KAFKA_{k.upper()}": v for k, v in extra.items()}}


def test_sasl_ssl_from_the_environment_reaches_every_client_library(tmp_path: Path, ca_file: str) -> None:
    env = Environment.load(_env(tmp_path, security_protocol="sasl_ssl", sasl_mechanism="scram-sha-512",
                                sasl_username="flywheel", sasl_password=PASSWORD, ssl_ca_file=ca_file))
    s = env.core
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert librdkafka_config(s) == {
        "security.protocol": "sasl_ssl", "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": ca_file, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "flywheel",
        "sasl.password": PASSWORD}
    py = kafka_python_config(s)
    assert {k: py[k] for k in ("security_protocol", "sasl_mechanism", "sasl_plain_username",
                               "sasl_plain_password")} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "flywheel",
        "sasl_plain_password": PASSWORD}
    assert py["ssl_context"].check_hostname and py["ssl_context"].get_ca_certs()  # the CA file is loaded
    creds = faust_credentials(s)
    assert (type(creds).__name__, creds.protocol.value, creds.mechanism.value, creds.username,
            creds.password) == ("SASLCredentials", "SASL_SSL", "SCRAM-SHA-512", "flywheel", PASSWORD)
    assert creds.ssl_context.get_ca_certs()

    # What the clients are built with, not only what the functions return. librdkafka checks its keys (and the CA
    # file) when a client is built, without connecting.
    worker = IngestWorker(s)
    assert {k: worker._consumer_config[k] for k in librdkafka_config(s)} == librdkafka_config(s)
    for client in (Producer, Consumer, AdminClient):
        client({"bootstrap.servers": s.kafka_bootstrap, "group.id": "x", **librdkafka_config(s)})
    sdk = FlywheelClient(s)
    try:
        assert sdk._config["sasl_plain_password"] == PASSWORD and sdk._config["security_protocol"] == "SASL_SSL"
    finally:
        sdk.close(0)
    from flywheel.streams.signals import make_app
    from flywheel.warehouse.alerts.outbox import AlertSettings, Outbox

    app = make_app(s, env.signals, AlertSettings(), Outbox(tmp_path / "outbox.sqlite"))
    assert type(app.conf.broker_credentials).__name__ == "SASLCredentials"
    assert app.conf.broker_credentials.password == PASSWORD


def test_plaintext_default_adds_nothing(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert (librdkafka_config(s), kafka_python_config(s), faust_credentials(s)) == ({}, {}, None)


def test_tls_and_plain_and_mutual_tls_map_per_library(tmp_path: Path, ca_file: str) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("flywheel-client")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    s = Settings(home=tmp_path, kafka_security_protocol="SSL", kafka_ssl_ca_file=ca_file,
                 kafka_ssl_cert_file=str(cert), kafka_ssl_key_file=str(key), kafka_ssl_check_hostname=False)
    assert librdkafka_config(s) == {"security.protocol": "ssl", "ssl.endpoint.identification.algorithm": "none",
                                    "ssl.ca.location": ca_file, "ssl.certificate.location": str(cert),
                                    "ssl.key.location": str(key)}
    Producer({"bootstrap.servers": "x:1", **librdkafka_config(s)})  # librdkafka loads the key pair here
    assert not kafka_python_config(s)["ssl_context"].check_hostname
    assert type(faust_credentials(s)).__name__ == "SSLCredentials"

    plain = Settings(home=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                     kafka_sasl_username="u", kafka_sasl_password=PASSWORD)
    assert librdkafka_config(plain) == {"security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN",
                                        "sasl.username": "u", "sasl.password": PASSWORD}
    assert "ssl_context" not in kafka_python_config(plain)
    assert faust_credentials(plain).protocol.value == "SASL_PLAINTEXT"


@pytest.mark.parametrize(("extra", "variable", "fix"), [
    ({"security_protocol": "TLS"}, "FLYWHEEL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
    ({"security_protocol": "SASL_SSL"}, "FLYWHEEL_KAFKA_SASL_MECHANISM", "PLAIN"),
    ({"sasl_mechanism": "PLAIN"}, "FLYWHEEL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "FLYWHEEL_KAFKA_SASL_MECHANISM", "not supported"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "FLYWHEEL_KAFKA_SASL_USERNAME", "set"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u"},
     "FLYWHEEL_KAFKA_SASL_PASSWORD", "set"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "FLYWHEEL_KAFKA_SASL_OAUTH_TOKEN_URL", "set"),
    ({"security_protocol": "SSL", "ssl_ca_file": "/nonexistent/ca.pem"}, "FLYWHEEL_KAFKA_SSL_CA_FILE", "PEM file"),
    ({"ssl_ca_file": "CA"}, "FLYWHEEL_KAFKA_SSL_CA_FILE", "SSL or SASL_SSL"),
    ({"security_protocol": "SSL", "ssl_cert_file": "CA"}, "FLYWHEEL_KAFKA_SSL_KEY_FILE", "both"),
])
def test_combinations_that_cannot_work_are_refused_naming_the_variable_and_the_fix(
        tmp_path: Path, ca_file: str, extra: dict[str, str], variable: str, fix: str) -> None:
    extra = {k: ca_file if v == "CA" else v for k, v in extra.items()}
    with pytest.raises(ConfigError) as err:
        Environment.load(_env(tmp_path, **extra))
    assert err.value.variable == variable and variable in str(err.value) and fix in str(err.value)


def test_secrets_stay_out_of_reprs_errors_and_flywheel_config(tmp_path: Path, ca_file: str) -> None:
    env = _env(tmp_path, security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER",
               sasl_oauth_token_url="https://idp.example/token", sasl_oauth_client_id="flywheel",
               sasl_oauth_client_secret=CLIENT_SECRET, ssl_ca_file=ca_file, sasl_password=PASSWORD)
    s = Environment.load(env).core
    assert PASSWORD not in repr(s) and CLIENT_SECRET not in repr(s)
    assert CLIENT_SECRET not in repr(faust_credentials(s)) and CLIENT_SECRET not in repr(OidcTokens(s))
    from click.testing import CliRunner

    from flywheel.cli import main

    res = CliRunner().invoke(main, ["config"], env=env)
    assert res.exit_code == 0, res.output
    out = res.output
    line = next(ln for ln in out.splitlines() if ln.startswith("FLYWHEEL_KAFKA_SASL_OAUTH_CLIENT_SECRET"))
    assert "(set)" in line
    assert CLIENT_SECRET not in out and PASSWORD not in out


class _TokenEndpoint(BaseHTTPRequestHandler):
    """An OIDC token endpoint: records each request (form and Authorization header), answers a numbered token."""

    requests: list[tuple[dict[str, list[str]], str]] = []
    status = 200

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((urllib.parse.parse_qs(body.decode()), self.headers.get("Authorization", "")))
        payload = json.dumps({"access_token": f"tok-{len(self.requests)}", "token_type": "bearer",
                              "expires_in": 3600}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def token_url() -> Iterator[str]:
    _TokenEndpoint.requests, _TokenEndpoint.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()


def test_oauthbearer_gets_and_reuses_tokens_from_the_oidc_endpoint_for_every_library(
        tmp_path: Path, token_url: str) -> None:
    s = Settings(home=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="OAUTHBEARER",
                 kafka_sasl_oauth_token_url=token_url, kafka_sasl_oauth_client_id="flywheel",
                 kafka_sasl_oauth_client_secret=CLIENT_SECRET, kafka_sasl_oauth_scope="kafka")
    # librdkafka asks the endpoint itself, as soon as the client is built (the client id and secret in a Basic
    # Authorization header)
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", **librdkafka_config(s)})
    deadline = time.monotonic() + 10
    while not _TokenEndpoint.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    basic = "Basic " + base64.b64encode(f"flywheel:{CLIENT_SECRET}".encode()).decode()
    librdkafka_asked = _TokenEndpoint.requests[0]
    assert librdkafka_asked == ({"grant_type": ["client_credentials"], "scope": ["kafka"]}, basic)
    del producer
    # kafka-python and aiokafka: flywheel's provider, which asks the same way
    _TokenEndpoint.requests = []
    provider = kafka_python_config(s)["sasl_oauth_token_provider"]
    assert provider.token() == "tok-1" and provider.token() == "tok-1"  # reused until near its expiry
    assert _TokenEndpoint.requests == [librdkafka_asked]
    creds = faust_credentials(s)
    assert asyncio.run(creds.oauth_cb.token()) == "tok-2"  # its own provider, the same endpoint

    _TokenEndpoint.status = 401
    with pytest.raises(BrokerUnavailable) as err:
        OidcTokens(s).token()
    assert token_url in str(err.value) and CLIENT_SECRET not in str(err.value)
