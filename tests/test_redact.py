"""Secret redaction of span and log attributes."""

from __future__ import annotations

from typing import Any

import pytest

from crosstrace.redact import MASK, Redactor


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db.password",
        "http.request.header.x-auth-token",
        "X-Auth-Token",
        "api_key",
        "Authorization",
        "client_secret",
        "os.credential",
        "token",
    ],
)
def test_secret_looking_keys_are_masked(key: str) -> None:
    attrs: dict[str, Any] = {key: "hunter2", "http.request.method": "GET"}
    Redactor().redact_attributes(attrs)
    assert attrs == {key: MASK, "http.request.method": "GET"}


def test_ordinary_keys_are_kept() -> None:
    attrs: dict[str, Any] = {"openstack.request_id": "req-1", "url.path": "/servers", "n": 3}
    Redactor().redact_attributes(attrs)
    assert attrs == {"openstack.request_id": "req-1", "url.path": "/servers", "n": 3}


def test_configured_keys_are_masked_case_insensitively() -> None:
    attrs: dict[str, Any] = {"X-Tenant-PIN": "1234", "other": "x"}
    Redactor(["x-tenant-pin"]).redact_attributes(attrs)
    assert attrs == {"X-Tenant-PIN": MASK, "other": "x"}


def test_secret_query_values_in_urls_are_masked() -> None:
    attrs: dict[str, Any] = {"url.full": "https://h/v3/auth?token=abc&limit=5"}
    Redactor().redact_attributes(attrs)
    assert attrs["url.full"] == f"https://h/v3/auth?token={MASK}&limit=5"


def test_url_password_is_masked() -> None:
    attrs: dict[str, Any] = {"db.connection_string": "postgresql://nova:pw@db/nova"}
    Redactor().redact_attributes(attrs)
    assert attrs["db.connection_string"] == f"postgresql://nova:{MASK}@db/nova"


def test_bare_query_string_is_masked() -> None:
    attrs: dict[str, Any] = {"url.query": "password=x&name=y"}
    Redactor().redact_attributes(attrs)
    assert attrs["url.query"] == f"password={MASK}&name=y"


def test_url_without_secrets_is_unchanged() -> None:
    url = "http://h/servers?limit=5&marker=abc"
    attrs: dict[str, Any] = {"url.full": url}
    Redactor().redact_attributes(attrs)
    assert attrs["url.full"] == url


def test_is_secret_caches_decisions() -> None:
    r = Redactor()
    assert r.is_secret("password")
    assert r.is_secret("password")
    assert not r.is_secret("name")
