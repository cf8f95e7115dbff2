"""Kafka TLS and SASL: the `FLYWHEEL_KAFKA_SECURITY_PROTOCOL`/`_SASL_*`/`_SSL_*` settings in each client library's
own terms, so every client flywheel builds (SDK, landing worker, collector, signals, releases, status) connects the
same way from one `Settings`, read once at the edge.

One function per library: `librdkafka_config` (confluent-kafka: worker, collector, topics, releases, status),
`kafka_python_config` (the SDK) and `faust_credentials` (signals, on aiokafka). The settings are checked when they are
built (`flywheel.config`), so these only translate. Secrets are revealed here and nowhere else, into the one client
option that needs them.

OAUTHBEARER is the OIDC client-credentials grant: librdkafka does it itself (`sasl.oauthbearer.method=oidc`);
kafka-python and aiokafka take a token provider, `OidcTokens`, which asks the same endpoint the same way.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from flywheel.config import Secret, Settings
from flywheel.errors import BrokerUnavailable

TOKEN_MARGIN_S = 60.0
"""A token is fetched again this long before it expires, so no connection presents one that expires mid-handshake."""


def _reveal(value: Secret | str) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """librdkafka's `security.protocol`, `sasl.*` and `ssl.*` keys for `settings` (nothing for PLAINTEXT), to merge
    into a confluent-kafka Producer, Consumer or AdminClient configuration."""
    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    out = {"security.protocol": s.kafka_security_protocol.lower()}
    if s.kafka_security_protocol.endswith("SSL"):
        out["ssl.endpoint.identification.algorithm"] = "https" if s.kafka_ssl_check_hostname else "none"
        if s.kafka_ssl_ca_file:
            out["ssl.ca.location"] = s.kafka_ssl_ca_file
        if s.kafka_ssl_cert_file:
            out["ssl.certificate.location"] = s.kafka_ssl_cert_file
            out["ssl.key.location"] = s.kafka_ssl_key_file
        if s.kafka_ssl_key_password:
            out["ssl.key.password"] = _reveal(s.kafka_ssl_key_password)
    if s.kafka_sasl_mechanism == "OAUTHBEARER":
        out.update({"sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
                    "sasl.oauthbearer.token.endpoint.url": s.kafka_sasl_oauth_token_url,
                    "sasl.oauthbearer.client.id": s.kafka_sasl_oauth_client_id,
                    "sasl.oauthbearer.client.secret": _reveal(s.kafka_sasl_oauth_client_secret)})
        if s.kafka_sasl_oauth_scope:
            out["sasl.oauthbearer.scope"] = s.kafka_sasl_oauth_scope
    elif s.kafka_sasl_mechanism:
        out.update({"sasl.mechanism": s.kafka_sasl_mechanism, "sasl.username": s.kafka_sasl_username,
                    "sasl.password": _reveal(s.kafka_sasl_password)})
    return out


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Python clients (kafka-python, aiokafka), or None without TLS: the CA file (else the
    system's CAs), the client certificate for mutual TLS, hostname checking as set."""
    s = settings
    if not s.kafka_security_protocol.endswith("SSL"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.kafka_ssl_ca_file or None)
    ctx.check_hostname = s.kafka_ssl_check_hostname
    if s.kafka_ssl_cert_file:
        ctx.load_cert_chain(s.kafka_ssl_cert_file, s.kafka_ssl_key_file,
                            password=_reveal(s.kafka_ssl_key_password) or None)
    return ctx


def kafka_python_config(settings: Settings) -> dict[str, Any]:
    """kafka-python's `security_protocol`, `ssl_context` and `sasl_*` options for `settings` (nothing for
    PLAINTEXT), for the SDK's KafkaProducer."""
    s = settings
    if s.kafka_security_protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        out["ssl_context"] = ctx
    if s.kafka_sasl_mechanism == "OAUTHBEARER":
        from kafka.net.sasl.oauth import AbstractTokenProvider

        class _Provider(AbstractTokenProvider):
            def __init__(self, tokens: OidcTokens) -> None:
                self.tokens = tokens

            def token(self) -> str:
                return self.tokens.token()

        out.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=_Provider(OidcTokens(s)))
    elif s.kafka_sasl_mechanism:
        out.update(sasl_mechanism=s.kafka_sasl_mechanism, sasl_plain_username=s.kafka_sasl_username,
                   sasl_plain_password=_reveal(s.kafka_sasl_password))
    return out


def faust_credentials(settings: Settings) -> Any:
    """faust's `broker_credentials` for `settings` (None for PLAINTEXT): SSLCredentials, SASLCredentials (PLAIN,
    SCRAM; with the TLS context under SASL_SSL) or OAuthCredentials."""
    import faust
    from aiokafka.abc import AbstractTokenProvider  # type: ignore[import-untyped]

    s = settings
    ctx = ssl_context(s)
    if s.kafka_sasl_mechanism == "OAUTHBEARER":
        tokens = OidcTokens(s)

        class _Provider(AbstractTokenProvider):
            async def token(self) -> str:
                import asyncio

                return await asyncio.get_running_loop().run_in_executor(None, tokens.token)

        return faust.OAuthCredentials(oauth_cb=_Provider(), ssl_context=ctx)
    if s.kafka_sasl_mechanism:
        return faust.SASLCredentials(username=s.kafka_sasl_username, password=_reveal(s.kafka_sasl_password),
                                     mechanism=s.kafka_sasl_mechanism, ssl_context=ctx)
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


class OidcTokens:
    """Access tokens from the OIDC token endpoint of `settings` (client-credentials grant), reused until
    `TOKEN_MARGIN_S` before they expire. Thread-safe: one request at a time, however many connections ask.

    The client id and secret go in a Basic Authorization header, as librdkafka sends them, so an identity provider
    set up for one client library serves them all."""

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self._url = settings.kafka_sasl_oauth_token_url
        pair = f"{settings.kafka_sasl_oauth_client_id}:{_reveal(settings.kafka_sasl_oauth_client_secret)}"
        self._authorization = Secret("Basic " + base64.b64encode(pair.encode()).decode())
        self._form = {"grant_type": "client_credentials"}
        if settings.kafka_sasl_oauth_scope:
            self._form["scope"] = settings.kafka_sasl_oauth_scope
        self._timeout = timeout
        self._lock = threading.Lock()
        self._token, self._until = "", 0.0

    def __repr__(self) -> str:
        return f"OidcTokens({self._url!r})"

    def token(self) -> str:
        with self._lock:
            if not self._token or time.monotonic() >= self._until:
                self._token, self._until = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        request = urllib.request.Request(self._url, data=urllib.parse.urlencode(self._form).encode(),
                                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                                  "Authorization": self._authorization.reveal()})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body = json.loads(response.read())
            token = body["access_token"]
        except (OSError, ValueError, KeyError, TypeError) as exc:  # the reason, never the request with its secret
            raise BrokerUnavailable(f"no OAUTHBEARER token from {self._url}: {type(exc).__name__}: "
                                    f"{getattr(exc, 'reason', exc)}; check FLYWHEEL_KAFKA_SASL_OAUTH_TOKEN_URL, "
                                    "_CLIENT_ID and _CLIENT_SECRET", token_url=self._url) from None
        lifetime = float(body.get("expires_in") or 300)
        return str(token), time.monotonic() + max(lifetime - TOKEN_MARGIN_S, lifetime / 2)
