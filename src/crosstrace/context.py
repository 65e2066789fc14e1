"""The request context: who asked, and under which request ids.

One :class:`RequestContext` per request, held in a :mod:`contextvars` variable so
threads, asyncio tasks and greenlets (with contextvars support) each see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from crosstrace.headers import (
    ENV_DOMAIN_ID,
    ENV_GLOBAL_REQUEST_ID,
    ENV_IS_ADMIN_PROJECT,
    ENV_PROJECT_DOMAIN_ID,
    ENV_PROJECT_ID,
    ENV_REQUEST_ID,
    ENV_ROLES,
    ENV_USER_DOMAIN_ID,
    ENV_USER_ID,
)
from crosstrace.ids import generate_request_id, is_valid_request_id

__all__ = [
    "ENV_GLOBAL_REQUEST_ID",
    "ENV_REQUEST_ID",
    "RequestContext",
    "get_current",
    "reset_current",
    "set_current",
    "submit",
    "use_context",
    "wrap",
]

# Longest identity value accepted from a header; longer ones are ignored.
_MAX_IDENTITY_LEN = 255


_FIELDS = (
    "request_id",
    "global_request_id",
    "user_id",
    "project_id",
    "domain_id",
    "user_domain_id",
    "project_domain_id",
    "roles",
    "is_admin",
)


class RequestContext:
    """Ids and identity of one request.

    ``request_id`` is this service's own id for the request; ``global_request_id``
    is the id the caller sent (valid ones only), shared by every service the
    request touches. :attr:`global_id` is what to send onwards.

    :attr:`untraced` is set by an entry point that serves the request with
    tracing off (the overhead budget's choice): a span opened under this
    context with no current span then does nothing. It travels with the
    context (a streamed response body, a thread the context is copied to) and
    is neither compared nor sent onwards.
    """

    __slots__ = (*_FIELDS, "untraced")

    def __init__(
        self,
        request_id: str | None = None,
        global_request_id: str | None = None,
        user_id: str | None = None,
        project_id: str | None = None,
        domain_id: str | None = None,
        user_domain_id: str | None = None,
        project_domain_id: str | None = None,
        roles: tuple[str, ...] | list[str] = (),
        is_admin: bool = False,
    ) -> None:
        if request_id is not None and not is_valid_request_id(request_id):
            raise ValueError("request_id must be 'req-' + a lowercase UUID")
        if global_request_id is not None and not is_valid_request_id(global_request_id):
            raise ValueError("global_request_id must be 'req-' + a lowercase UUID")
        self.request_id: str = request_id or generate_request_id()
        self.global_request_id: str | None = global_request_id
        self.user_id = user_id
        self.project_id = project_id
        self.domain_id = domain_id
        self.user_domain_id = user_domain_id
        self.project_domain_id = project_domain_id
        self.roles: tuple[str, ...] = tuple(roles)
        self.is_admin = bool(is_admin)
        self.untraced = False

    @property
    def global_id(self) -> str:
        """The id to send to other services: the global id, else the local one."""
        return self.global_request_id or self.request_id

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any], **overrides: Any) -> RequestContext:
        """Build a context from a WSGI environ.

        Reads the ``openstack.*`` keys set by a request-id middleware and the
        identity headers keystonemiddleware sets. Keyword arguments win.
        """
        # One call per request: unrolled, and each id validated exactly once.
        get = environ.get
        ctx = cls.__new__(cls)
        ctx.untraced = False
        rid = get(ENV_REQUEST_ID)
        ctx.request_id = (
            rid if rid is not None and is_valid_request_id(rid) else generate_request_id()
        )
        grid = get(ENV_GLOBAL_REQUEST_ID)
        ctx.global_request_id = grid if grid is not None and is_valid_request_id(grid) else None
        # Identity values: non-empty strings of sane length (inlined: hot path).
        v = get(ENV_USER_ID)
        ctx.user_id = v if v.__class__ is str and 0 < len(v) <= _MAX_IDENTITY_LEN else None
        v = get(ENV_PROJECT_ID)
        ctx.project_id = v if v.__class__ is str and 0 < len(v) <= _MAX_IDENTITY_LEN else None
        v = get(ENV_DOMAIN_ID)
        ctx.domain_id = v if v.__class__ is str and 0 < len(v) <= _MAX_IDENTITY_LEN else None
        v = get(ENV_USER_DOMAIN_ID)
        ctx.user_domain_id = v if v.__class__ is str and 0 < len(v) <= _MAX_IDENTITY_LEN else None
        v = get(ENV_PROJECT_DOMAIN_ID)
        ctx.project_domain_id = (
            v if v.__class__ is str and 0 < len(v) <= _MAX_IDENTITY_LEN else None
        )
        roles = get(ENV_ROLES)
        if isinstance(roles, str) and roles:
            ctx.roles = tuple(r.strip() for r in roles.split(",") if r.strip())
            ctx.is_admin = "admin" in ctx.roles and (
                str(get(ENV_IS_ADMIN_PROJECT, "true")).lower() == "true"
            )
        else:
            ctx.roles = ()
            ctx.is_admin = False
        if overrides:
            values = {name: getattr(ctx, name) for name in _FIELDS}
            values.update(overrides)
            return cls(**values)
        return ctx

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict, for RPC message headers; see :meth:`from_dict`."""
        out = {name: getattr(self, name) for name in _FIELDS}
        out["roles"] = list(self.roles)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RequestContext:
        """Rebuild a context sent with :meth:`to_dict`; invalid ids are dropped.

        A message from another process is untrusted input: a malformed request
        id is replaced (local) or dropped (global) instead of raising.
        """
        kwargs: dict[str, Any] = {}
        for name in _FIELDS:
            if name not in values:
                continue
            value = values[name]
            if name in ("request_id", "global_request_id"):
                if not is_valid_request_id(value):
                    continue
            elif name == "roles":
                if not isinstance(value, (list, tuple)):
                    continue
                value = tuple(str(r) for r in value)
            elif name == "is_admin":
                value = value is True
            elif value is not None and not (
                isinstance(value, str) and len(value) <= _MAX_IDENTITY_LEN
            ):
                continue
            kwargs[name] = value
        return cls(**kwargs)

    @property
    def user_identity(self) -> str:
        """oslo.log's ``user_identity``, with its default ``logging_user_identity_format``.

        That format is ``%(user)s %(project)s %(domain)s %(system_scope)s
        %(user_domain)s %(project_domain)s`` with ``-`` for every empty value;
        crosstrace has no system scope, so that field is always ``-``.
        """
        return (
            f"{self.user_id or '-'} {self.project_id or '-'} {self.domain_id or '-'} - "
            f"{self.user_domain_id or '-'} {self.project_domain_id or '-'}"
        )

    def get_logging_values(self) -> dict[str, Any]:
        """Values for log records. Holds no secrets: ids, identity and roles only."""
        values = self.to_dict()
        values["user_identity"] = self.user_identity
        return values

    def __repr__(self) -> str:
        return (
            f"RequestContext(request_id={self.request_id!r}, "
            f"global_request_id={self.global_request_id!r}, "
            f"user_id={self.user_id!r}, project_id={self.project_id!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RequestContext):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _FIELDS)

    __hash__ = None  # type: ignore[assignment]


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "crosstrace_request_context", default=None
)

#: The context of the request being served here, or ``None``.
get_current: Callable[[], RequestContext | None] = _current.get


def set_current(context: RequestContext | None) -> contextvars.Token[RequestContext | None]:
    """Make *context* current; pass the token to :func:`reset_current`."""
    return _current.set(context)


def reset_current(token: contextvars.Token[RequestContext | None]) -> None:
    """Restore the context that was current before :func:`set_current`."""
    _current.reset(token)


@contextlib.contextmanager
def use_context(context: RequestContext | None) -> Iterator[RequestContext | None]:
    """Make *context* current inside a ``with`` block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


P = ParamSpec("P")
R = TypeVar("R")


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Bind *fn* to a copy of the caller's contextvars (request context, span).

    Use it to hand work to another thread: the callee sees the caller's context.
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.run(fn, *args, **kwargs)

    return run


def submit(executor: Executor, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
    """``executor.submit`` that runs *fn* under the caller's context."""
    return executor.submit(wrap(fn), *args, **kwargs)
