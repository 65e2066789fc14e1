"""Who is looking: the web UI's token, asked for once and kept in a cookie.

When the query API requires a token, a page visited without one redirects to
``/login``, which asks for the API token and keeps it in an HttpOnly,
SameSite=Strict session cookie (no expiry: it goes when the browser closes;
``Secure`` when the page came over HTTPS). Each page then checks the cookie's
token exactly as the API checks a Bearer token, and reads the store with the
same scope, so a token sees in the UI what it sees through the API. A Bearer
``Authorization`` header is accepted too, for scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Request

from crosstrace.server.auth import MAX_TOKEN_LENGTH, TokenSet, bearer_token

__all__ = [
    "COOKIE_NAME",
    "LoginRequired",
    "Viewer",
    "WebAuth",
    "login_form_token",
    "safe_next",
]

#: The cookie that carries the API token.
COOKIE_NAME: Final = "crosstrace_token"
_MAX_FORM_BYTES: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class Viewer:
    """The identity a page reads the store as (``None`` scope: everything)."""

    authenticated: bool
    allowed_projects: frozenset[str] | None = None


class LoginRequired(Exception):
    """A page needs a token; the handler redirects to ``/login?next=...``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class WebAuth:
    """Checks the UI's token with the API's own token set."""

    def __init__(self, tokens: TokenSet | None = None) -> None:
        self.tokens = tokens or TokenSet()

    @property
    def required(self) -> bool:
        return bool(self.tokens)

    def token_of(self, request: Request) -> str | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            token = request.cookies.get(COOKIE_NAME) or None
        if token is not None and len(token) > MAX_TOKEN_LENGTH:
            return None
        return token

    def check(self, token: str | None) -> bool:
        return not self.required or self.tokens.check(token)

    def viewer(self, request: Request) -> Viewer:
        """The request's viewer; raises :class:`LoginRequired` without a valid token."""
        if not self.required:
            return Viewer(authenticated=False)
        if not self.tokens.check(self.token_of(request)):
            path = request.url.path
            if request.url.query:
                path += "?" + request.url.query
            raise LoginRequired(path)
        return Viewer(authenticated=True)


def safe_next(value: str | None) -> str:
    """A local path to go back to after login: never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(safe_next(next_path), safe="/")


async def login_form_token(request: Request) -> tuple[str | None, str]:
    """(token, next) from the login form's urlencoded body (no multipart needed)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return None, "/"
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None, "/"
    token = (fields.get("token") or [""])[0].strip() or None
    return token, safe_next((fields.get("next") or ["/"])[0])
