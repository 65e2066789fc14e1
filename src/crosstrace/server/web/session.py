"""Who is looking: the web UI's token, asked for once and kept in a cookie.

When the query API requires a token, a page visited without one redirects to
``/login``, which asks for the API token and keeps it in an HttpOnly,
SameSite=Strict session cookie (no expiry: it goes when the browser closes;
``Secure`` when the page came over HTTPS). Each page then checks the cookie's
token exactly as the API checks a Bearer token (the same
:class:`~crosstrace.server.auth.access.Access`: ``--auth-file`` identities,
legacy API tokens, Keystone tokens) and reads the store with the same scope,
masking the same sensitive values, so a token sees in the UI what it sees
through the API. A Bearer ``Authorization`` or an ``X-Auth-Token`` header is
accepted too, for scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import Request

from crosstrace.server.auth import MAX_TOKEN_LENGTH, TokenSet, bearer_token
from crosstrace.server.auth.access import KEYSTONE_HEADER, NO_MASK, Access, Masker
from crosstrace.server.auth.identities import Identity
from crosstrace.server.auth.policy import READ
from crosstrace.server.scope import Scope

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
    """The identity a page reads the store as: its scope, and what to mask."""

    authenticated: bool
    scope: Scope = Scope.ALL
    masker: Masker = NO_MASK
    identity: Identity | None = None


class LoginRequired(Exception):
    """A page needs a token; the handler redirects to ``/login?next=...``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class WebAuth:
    """Checks the UI's token with the API's own access control."""

    def __init__(self, tokens: TokenSet | None = None, access: Access | None = None) -> None:
        self.access = access or Access(api_tokens=tokens)

    @property
    def required(self) -> bool:
        return not self.access.api_open

    def token_of(self, request: Request) -> str | None:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            token = request.cookies.get(COOKIE_NAME) or None
        if token is not None and len(token) > MAX_TOKEN_LENGTH:
            return None
        return token

    def _identity(self, token: str | None, keystone: str | None) -> Identity | None:
        who = self.access.identify(f"Bearer {token}" if token else None, keystone)
        return who if who is not None and self.access.allows(READ, who) else None

    def may(self, viewer: Viewer, rule: str) -> bool:
        """Whether *viewer* passes policy *rule* (everyone does when the API is open)."""
        if not self.required:
            return True
        return viewer.identity is not None and self.access.allows(rule, viewer.identity)

    def check(self, token: str | None) -> bool:
        """Whether *token* (an API token or a Keystone token) may read."""
        if not self.required:
            return True
        if token is None:
            return False
        return self._identity(token, None) is not None or (
            self.access.keystone is not None and self._identity(None, token) is not None
        )

    def viewer(self, request: Request) -> Viewer:
        """The request's viewer; raises :class:`LoginRequired` without a valid token."""
        token = self.token_of(request)
        keystone = request.headers.get(KEYSTONE_HEADER)
        who = self._identity(token, keystone)
        if who is None and token is not None and self.access.keystone is not None:
            who = self._identity(None, token)  # a Keystone token typed into the login form
        if who is None:
            if not self.required:
                return Viewer(authenticated=False)
            path = request.url.path
            if request.url.query:
                path += "?" + request.url.query
            raise LoginRequired(path)
        request.state.crosstrace_identity = who  # for the audit log
        return Viewer(
            authenticated=self.required,
            scope=who.scope,
            masker=self.access.masker(who),
            identity=who,
        )


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
