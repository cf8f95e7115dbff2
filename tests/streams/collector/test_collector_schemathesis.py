"""The collector against its own OpenAPI document, fuzzed by schemathesis: events that fit the document's schemas
(positive) and events that break them (negative), on a real collector (uvicorn on 127.0.0.1) on the session broker.

Whatever arrives, the collector answers without a 5xx, with a status, content type, headers and body the document
states, refuses what breaks the document (4xx), and says why: every 400 on the event routes lists each reason.
The number of examples is bounded so the whole module costs a few seconds in `make test`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flywheel.config import Settings
from flywheel.infra.testing.collector import serving
from flywheel.streams.collector.settings import CollectorSettings

from .conftest import AUTH, KEY, wait_ready

QUICK, DEEP = 6, 150
"""Examples per route and mode: QUICK in `make test` (a few seconds: generating contract-shaped events is most of
the cost), DEEP in the reliability tier."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]


def _refusal_explained(path: str, status: int, body: Any) -> None:
    """A refusal names its reason; a refused batch on an event route names every bad line's field and reason."""
    if status < 400:
        return
    assert isinstance(body, dict), f"{path} answered {status} without a JSON object body"
    assert isinstance(body.get("error"), str) and body["error"].strip(), f"{path} {status}: no reason given"
    if status == 400 and path in ("/v1/inference", "/v1/feedback") and "holds no event" not in body["error"] \
            and "not valid gzip" not in body["error"]:
        errors = body.get("errors")
        assert isinstance(errors, list) and errors, f"{path} refused a batch without listing why: {body}"
        assert all(isinstance(e.get("reason"), str) and e["reason"] for e in errors), body


@pytest.fixture(scope="module")
def served(broker_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One collector for the module (starting one costs seconds), on topics of its own."""
    tag = uuid.uuid4().hex[:8]
    s = Settings(home=tmp_path_factory.mktemp("fuzzed-collector"), broker_port=broker_port, topic_prefix=f"f{tag}",
                 partitions=1)
    with serving(s, CollectorSettings(api_keys=KEY, max_body_bytes=256 * 1024, max_batch_events=100)) as base:
        wait_ready(base)
        yield base


# The traces body has no schema in the document (OTLP's protobuf or JSON), so there is nothing to negate.
@pytest.mark.parametrize(("path", "mode"), [(p, m) for p in ("/v1/inference", "/v1/feedback")
                                            for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
                         + [("/v1/traces", GenerationMode.POSITIVE)])
@pytest.mark.parametrize("examples", [pytest.param(QUICK, id="quick"),
                                      pytest.param(DEEP, id="deep", marks=pytest.mark.reliability)])
def test_the_collector_answers_every_generated_request_as_its_document_says(
        served: str, path: str, mode: GenerationMode, examples: int) -> None:
    collector, auth = served, dict(AUTH)
    op = schemathesis.openapi.from_url(f"{collector}/openapi.json")[path]["POST"]  # the document it serves
    seen: dict[int, int] = {}

    @given(case=op.as_strategy(generation_mode=mode))
    @hsettings(max_examples=examples, deadline=None,
               suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=collector, headers=auth, timeout=10)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS, headers=auth)
        try:
            body = response.json()
        except ValueError:
            body = None
        if path != "/v1/traces" or response.status_code in (400, 401, 413, 415, 503):
            _refusal_explained(path, response.status_code, body)

    check()
    assert seen and not any(s >= 500 for s in seen), seen
    if mode is GenerationMode.NEGATIVE:
        assert not seen.get(202), f"an event that breaks the document was accepted: {seen}"
