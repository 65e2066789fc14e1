"""configure(): environment, explicit arguments, the watched file, SIGHUP reload."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crosstrace
from crosstrace import config, export, tracing
from crosstrace.config import parse_duration
from crosstrace.tracing import tracer as tr


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in config.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    previous = tr.get_tracer()
    yield
    config.shutdown(2.0)
    tr._set_tracer(previous)


def test_configure_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSTRACE_SERVICE_NAME", "nova-api")
    monkeypatch.setenv("CROSSTRACE_TRANSPORT", "none")
    monkeypatch.setenv("CROSSTRACE_SAMPLE_RATIO", "0.25")
    monkeypatch.setenv("CROSSTRACE_OVERHEAD_BUDGET", "2%")
    monkeypatch.setenv("CROSSTRACE_RATE_LIMIT", "50")
    monkeypatch.setenv("CROSSTRACE_SLOW_THRESHOLD", "250ms")
    monkeypatch.setenv("CROSSTRACE_OSPROFILER_KEYS", "k1, k2")
    monkeypatch.setenv("CROSSTRACE_TRIGGER_KEY", "trig")
    t = crosstrace.configure()
    s = config.current_settings()
    assert s is not None
    assert (s.service_name, s.transport, s.sample_ratio) == ("nova-api", "none", 0.25)
    assert s.overhead_budget == pytest.approx(0.02)
    assert t.resource["service.name"] == "nova-api"
    assert t.sample_ratio == 0.25
    assert t.bucket.rate == 50.0
    assert t.slow_ns == 250_000_000
    assert t.osprofiler_keys == ("k1", "k2")
    assert t.trigger_keys == ("trig",)
    assert t.controller is not None
    assert t.controller.budget == pytest.approx(0.02)
    assert tr.get_tracer() is t


def test_bad_environment_values_fall_back_and_are_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CROSSTRACE_SAMPLE_RATIO", "lots")
    monkeypatch.setenv("CROSSTRACE_QUEUE_SIZE", "-3")
    monkeypatch.setenv("CROSSTRACE_TRANSPORT", "pigeon")
    monkeypatch.setenv("CROSSTRACE_TRIGGER_KEY", "")
    with caplog.at_level(logging.WARNING, logger="crosstrace.config"):
        crosstrace.configure(transport="none")
    s = config.current_settings()
    assert s is not None
    assert s.sample_ratio == 1.0
    assert s.queue_size == 2048
    text = caplog.text
    assert "sample_ratio" in text
    assert "queue_size" in text
    assert "transport" in text


def test_secret_settings_are_not_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CROSSTRACE_HEADERS", "Authorization=Bearer s3cr3t\nx")
    with caplog.at_level(logging.WARNING, logger="crosstrace.config"):
        crosstrace.configure(transport="none")
    assert "headers" in caplog.text
    assert "s3cr3t" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sample_ratio": 1.5}, "sample_ratio"),
        ({"sample_ratio": "x"}, "sample_ratio"),
        ({"overhead_budget": -0.1}, "overhead_budget"),
        ({"transport": "carrier-pigeon"}, "transport"),
        ({"endpoint": "not a url"}, "endpoint"),
        ({"slow_threshold": "soon"}, "duration"),
        ({"queue_size": 0}, "queue_size"),
        ({"rate_limit": -1}, "rate_limit"),
        ({"no_such_setting": 1}, "unknown setting"),
        ({"headers": "noequals"}, "headers"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        crosstrace.configure(**kwargs)  # type: ignore[arg-type]


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSTRACE_SAMPLE_RATIO", "0.5")
    t = crosstrace.configure(transport="none", sample_ratio=0.1)
    assert t.sample_ratio == 0.1


def test_second_configure_updates_run_time_settings_in_place() -> None:
    t1 = crosstrace.configure(service_name="a", transport="none", sample_ratio=1.0)
    t2 = crosstrace.configure(sample_ratio=0.0, slow_threshold="5s")
    assert t2 is t1
    assert t1.sample_ratio == 0.0
    assert t1.slow_ns == 5_000_000_000
    assert t1.resource["service.name"] == "a"  # earlier arguments are kept


def test_changing_the_service_name_builds_a_new_tracer() -> None:
    t1 = crosstrace.configure(service_name="a", transport="none")
    t2 = crosstrace.configure(service_name="b")
    assert t2 is not t1
    assert tr.get_tracer() is t2
    assert t2.resource["service.name"] == "b"


def test_file_transport_is_wired_to_the_tracer(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    crosstrace.configure(
        service_name="svc", transport="file", file=str(path), overhead_budget=0, export_delay=0.05
    )
    with crosstrace.span("root"):
        pass
    exporter = export.active()
    assert exporter is not None
    assert exporter.force_flush(5.0)
    doc = json.loads(path.read_text().splitlines()[0])
    assert doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"] == "root"


def test_transport_none_has_no_exporter() -> None:
    crosstrace.configure(transport="none")
    assert export.active() is None
    with crosstrace.span("x") as s:
        assert s.is_recording()


def test_shutdown_returns_to_the_no_op_state() -> None:
    crosstrace.configure(transport="none")
    config.shutdown()
    with crosstrace.span("x") as s:
        assert s is tracing.INVALID_SPAN


def test_reload_reads_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "crosstrace.json"
    path.write_text(json.dumps({"sample_ratio": 0.5}))
    t = crosstrace.configure(transport="none", config_file=str(path), sample_ratio=1.0)
    assert t.sample_ratio == 0.5  # the file wins over arguments
    path.write_text(json.dumps({"sample_ratio": 0.2, "overhead_budget": 0.05}))
    assert config.reload()
    assert t.sample_ratio == 0.2
    assert t.controller is not None
    assert t.controller.budget == 0.05
    assert not config.reload()  # unchanged


def test_toml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "crosstrace.toml"
    path.write_text('sample_ratio = 0.3\nslow_threshold = "1s"\n')
    t = crosstrace.configure(transport="none", config_file=str(path))
    assert t.sample_ratio == 0.3
    assert t.slow_ns == 1_000_000_000


def test_bad_file_values_are_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "crosstrace.json"
    path.write_text(json.dumps({"sample_ratio": 7, "unknown": 1, "rate_limit": 3}))
    with caplog.at_level(logging.WARNING, logger="crosstrace.config"):
        t = crosstrace.configure(transport="none", config_file=str(path), sample_ratio=0.4)
    assert t.sample_ratio == 0.4
    assert t.bucket.rate == 3.0
    assert "unknown" in caplog.text


def test_unreadable_file_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "crosstrace.json"
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="crosstrace.config"):
        t = crosstrace.configure(transport="none", config_file=str(path), sample_ratio=0.4)
    assert t.sample_ratio == 0.4
    assert "cannot read" in caplog.text


def test_watched_file_change_applies_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "crosstrace.json"
    path.write_text(json.dumps({"sample_ratio": 0.5}))
    t = crosstrace.configure(transport="none", config_file=str(path))
    path.write_text(json.dumps({"sample_ratio": 0.05}))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a distinct mtime
    assert wait_for(lambda: t.sample_ratio == 0.05, timeout=10.0)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs SIGHUP")
def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGHUP)
    path = tmp_path / "crosstrace.json"
    path.write_text(json.dumps({"sample_ratio": 0.5}))
    try:
        t = crosstrace.configure(transport="none", config_file=str(path), reload_on_sighup=True)
        st = os.stat(path)
        path.write_text(json.dumps({"sample_ratio": 0.125}))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: only SIGHUP tells
        os.kill(os.getpid(), signal.SIGHUP)
        assert wait_for(lambda: t.sample_ratio == 0.125, timeout=5.0)
    finally:
        signal.signal(signal.SIGHUP, previous)
        config._state.sighup_installed = False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("250ms", 0.25), ("1m", 60.0), ("1.5", 1.5), (3, 3.0), ("0", 0.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1s", "2 days", "", True, None, "1e3"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
