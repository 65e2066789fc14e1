"""Tokens, the loopback rule, and the serve settings (flags > env > file > defaults)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from crosstrace.cli import main
from crosstrace.server.auth import TokenSet, bearer_token, is_loopback
from crosstrace.server.settings import (
    Settings,
    SettingsError,
    default_decode_workers,
    parse_size,
    resolve,
)
from crosstrace.server.settings import (
    parse_duration_ns as parse_duration,
)


def test_tokens_are_kept_only_as_digests() -> None:
    tokens = TokenSet(["s3cret"])
    assert tokens.check("s3cret")
    assert not tokens.check("s3cre")
    assert not tokens.check(None)
    assert tokens._digests == (hashlib.sha256(b"s3cret").digest(),)


def test_sha256_form_accepts_the_matching_token() -> None:
    digest = hashlib.sha256(b"from-config").hexdigest()
    tokens = TokenSet([f"sha256:{digest.upper()}"])
    assert tokens.check("from-config")
    assert not tokens.check(f"sha256:{digest}")


@pytest.mark.parametrize("spec", ["sha256:abc", "", " padded "])
def test_bad_token_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="token"):
        TokenSet([spec])


def test_empty_token_set_is_falsy_and_accepts_nothing() -> None:
    assert not TokenSet()
    assert not TokenSet().check("anything")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc ", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        (None, None),
        ("Bearer " + "x" * 5000, None),
    ],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_defaults_bind_loopback_with_auth_off(tmp_path: Path) -> None:
    settings = resolve({}, env={"CROSSTRACE_DB": "sqlite:///x.db"})
    assert (settings.host, settings.port, settings.db) == ("127.0.0.1", 4318, "sqlite:///x.db")
    assert not settings.ingest_tokenset
    assert not settings.api_tokenset
    assert settings.retention == 7 * 86400 * 10**9
    assert settings.sources["port"] == "default"


def test_non_loopback_without_tokens_is_refused() -> None:
    with pytest.raises(SettingsError, match="--ingest-token and --api-token"):
        resolve({"host": "0.0.0.0"}, env={})
    with pytest.raises(SettingsError, match="--api-token"):
        resolve({"host": "0.0.0.0", "ingest_tokens": ("a",)}, env={})
    with pytest.raises(SettingsError, match="--no-auth"):
        resolve({"host": "0.0.0.0", "no_auth": True}, env={})
    ok = resolve({"host": "0.0.0.0", "ingest_tokens": ("a",), "api_tokens": ("b",)}, env={})
    assert ok.ingest_tokenset.check("a")
    assert ok.api_tokenset.check("b")


def test_no_auth_conflicts_with_tokens_and_no_http_needs_consume() -> None:
    with pytest.raises(SettingsError, match="conflicts"):
        resolve({"no_auth": True, "api_tokens": ("b",)}, env={})
    with pytest.raises(SettingsError, match="needs --consume"):
        resolve({"no_http": True}, env={})


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(
        '[serve]\nport = 5000\nhost = "127.0.0.2"\nretention = "2d"\nprefetch = 7\n'
        'api_tokens = ["one", "two"]\n'
    )
    env = {"CROSSTRACE_PORT": "6000", "CROSSTRACE_RETENTION": "3d"}
    settings = resolve({"port": "7000"}, env=env, config=config)
    assert settings.port == 7000  # flag
    assert settings.retention == 3 * 86400 * 10**9  # env over file
    assert settings.host == "127.0.0.2"  # file over default
    assert settings.prefetch == 7
    assert settings.decode_workers == default_decode_workers()
    assert resolve({"decode_workers": "0"}, env={}).decode_workers == 0
    assert settings.api_tokenset.check("two")
    assert settings.max_db_size is None  # default
    assert settings.sources["retention"] == "$CROSSTRACE_RETENTION"
    from_env_file = resolve({}, env={"CROSSTRACE_CONFIG": str(config)})
    assert from_env_file.port == 5000


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"port": "70000"}, {}, "outside 0-65535"),
        ({"port": "http"}, {}, "bad value from --port"),
        ({}, {"CROSSTRACE_RETENTION": "forever"}, "bad value from $CROSSTRACE_RETENTION"),
        ({"max_db_size": "10 parsecs"}, {}, "size"),
        ({}, {"CROSSTRACE_NO_HTTP": "perhaps"}, "boolean"),
        ({"prefetch": "0"}, {}, "at least 1"),
        ({}, {"CROSSTRACE_DECODE_WORKERS": "-1"}, "0 or more"),
    ],
)
def test_bad_values_name_their_source(
    flags: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        resolve(flags, env=env)
    assert message in info.value.message


def test_bad_config_files_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[serve\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        resolve({}, env={}, config=bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[serve]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting.*prot"):
        resolve({}, env={}, config=typo)
    with pytest.raises(SettingsError, match="cannot read"):
        resolve({}, env={}, config=tmp_path / "missing.toml")


def test_duration_and_size_parsers() -> None:
    assert parse_duration("250ms") == 250_000_000
    assert parse_duration("1.5s") == 1_500_000_000
    assert parse_duration("7d") == 7 * 86400 * 10**9
    assert parse_size("10GB") == 10 * 1000**3
    assert parse_size("1GiB") == 1024**3
    assert parse_size("4096") == 4096
    for bad in ("7 days", "-1s", "ms"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_settings_describe_auth() -> None:
    assert "open" in Settings().describe_auth()
    assert "1 token" in Settings(api_tokens=("x",)).describe_auth()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "Invalid value for --port"),
        (["--host", "0.0.0.0"], "refusing to serve on non-loopback address 0.0.0.0"),
        (["--retention", "soon"], "Invalid value for --retention"),
        (["--no-http"], "--no-http needs --consume"),
    ],
)
def test_serve_cli_reports_bad_settings_without_a_traceback(
    args: list[str], message: str, tmp_path: Path
) -> None:
    db = "sqlite:///" + str(tmp_path / "x.sqlite3")
    result = CliRunner().invoke(main, ["serve", "--db", db, *args], env={"CROSSTRACE_CONFIG": ""})
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.sqlite3").exists()  # nothing started


def test_serve_cli_reports_an_unreachable_store(tmp_path: Path) -> None:
    url = "postgresql://127.0.0.1:1/nothing?connect_timeout=1"
    result = CliRunner().invoke(main, ["serve", "--db", url, "--port", "0"])
    assert result.exit_code == 1
    assert "cannot open the store" in result.output
    assert "Traceback" not in result.output
