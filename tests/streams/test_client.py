"""The SDK validates at the edge, with every reason in the error."""

from __future__ import annotations

from datetime import datetime

import pytest

from flywheel.config import Settings
from flywheel.errors import BrokerUnavailable, ContractViolation
from flywheel.infra.broker import free_port
from flywheel.streams.client import FlywheelClient, encode


def test_invalid_calls_raise_with_every_reason(kafka_settings: Settings) -> None:
    with FlywheelClient(kafka_settings) as fw:
        with pytest.raises(ContractViolation) as err:
            fw.log_inference(app="a", model="m", input=[], output="o", latency_ms=-3)
        assert err.value.reasons == [
            "`input` must be a string or a non-empty list of {role, content} messages", "`latency_ms` must be >= 0"]
        with pytest.raises(ContractViolation, match="thumbs feedback needs value 1 or -1"):
            fw.log_feedback(inference_id="x", kind="thumbs", value=5)
        with pytest.raises(ContractViolation, match="timezone-aware"):
            fw.log_inference(app="a", model="m", input="q", output="o", timestamp=datetime(2026, 1, 1))
        iid = fw.log_inference(app="a", model="m", input="q", output="o")
        assert len(iid) == 36
        fw.flush()


def test_no_broker_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(BrokerUnavailable, match="flywheel broker start"):
        FlywheelClient(Settings(home=tmp_path, broker_port=free_port()), max_block_ms=1000,
                       bootstrap_timeout_ms=1000)


def test_encoding_is_compact_utf8() -> None:
    assert encode({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()
