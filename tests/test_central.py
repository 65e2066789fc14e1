"""The central-settings poller: local values win, an unreachable server is counted."""

from __future__ import annotations

import socket

import pytest

from crosstrace.central import SamplingPoller
from crosstrace.tracing import Tracer


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_central_values_apply_except_what_the_local_config_sets() -> None:
    t = Tracer("svc", sample_ratio=1.0, overhead_budget=0.1)
    poller = SamplingPoller("http://127.0.0.1:1", t, explicit=frozenset({"overhead_budget"}))
    applied = poller.apply({"ratio": 0.25, "budget": 0.02, "slow_threshold": 0.5})
    assert applied == {"ratio": 0.25, "slow_threshold": 0.5}
    assert t.sample_ratio == 0.25
    assert t.slow_ns == 500_000_000
    assert t.controller is not None
    assert t.controller.budget == 0.1  # the local file's value wins


def test_unreachable_server_keeps_the_last_settings_and_is_counted() -> None:
    t = Tracer("svc", sample_ratio=1.0, overhead_budget=0.1)
    poller = SamplingPoller(_closed_port_url(), t, timeout_s=0.5)
    poller.apply({"ratio": 0.5})
    assert poller.poll_once() is False
    assert poller.poll_once() is False
    assert poller.failures == 2
    assert t.sample_ratio == 0.5


def test_bad_sampling_url_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="http"):
        SamplingPoller("ftp://example", Tracer("svc"))


def test_report_says_what_the_tracer_spends() -> None:
    t = Tracer("svc", overhead_budget=0.02)
    body = SamplingPoller("http://127.0.0.1:1", t, dropped=lambda: 7).report_body()
    assert body["service"] == "svc"
    assert body["budget"] == 0.02
    assert body["spans_dropped"] == 7
    assert set(body) >= {"overhead", "floor", "effective_ratio", "record_fraction", "poll_failures"}
