"""Convert between crosstrace's :class:`~crosstrace.context.RequestContext` and
oslo.context's ``RequestContext``, both ways, with both request ids and the
identity fields (user, project, domain, user domain, project domain, roles,
admin flag)::

    from crosstrace.integrations.oslo_context import from_oslo, to_oslo

    oslo_ctx = to_oslo()                 # the current crosstrace context, for oslo code
    ctx = from_oslo(oslo_ctx)            # and back

:func:`from_oslo_dict` reads the dict form that oslo.context's ``to_dict()``
writes (what oslo.messaging carries), where the identity keys are ``user``,
``project_id``, ``domain``, ``user_domain`` and ``project_domain``.

Ids from oslo are validated: an id that is not ``req-`` + a lowercase UUID is
replaced (local) or dropped (global), as for any inbound value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from oslo_context import context as _oslo

from crosstrace.context import RequestContext, get_current
from crosstrace.ids import generate_request_id, is_valid_request_id

__all__ = ["context_from_dict", "from_oslo", "from_oslo_dict", "to_oslo", "to_oslo_dict"]

_MAX_IDENTITY_LEN = 255


def _identity(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_IDENTITY_LEN:
        return value
    return None


def _roles(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(r) for r in value if isinstance(r, str) and r)
    return ()


def to_oslo(
    context: RequestContext | None = None,
    cls: type[_oslo.RequestContext] = _oslo.RequestContext,
    overwrite: bool = False,
    **kwargs: Any,
) -> _oslo.RequestContext:
    """An oslo.context ``RequestContext`` (or subclass *cls*) for *context*
    (default: the current one; with none, a context with a fresh local id).

    *overwrite* is oslo's: whether the new object replaces oslo's thread-local
    current context (oslo stores it anyway when there is none). Other keyword
    arguments go to *cls* and win.
    """
    ctx = context if context is not None else get_current()
    if ctx is None:
        ctx = RequestContext()
    values: dict[str, Any] = {
        "request_id": ctx.request_id,
        "global_request_id": ctx.global_request_id,
        "user_id": ctx.user_id,
        "project_id": ctx.project_id,
        "domain_id": ctx.domain_id,
        "user_domain_id": ctx.user_domain_id,
        "project_domain_id": ctx.project_domain_id,
        "roles": list(ctx.roles),
        "is_admin": ctx.is_admin,
        "overwrite": overwrite,
    }
    values.update(kwargs)
    return cls(**values)


def to_oslo_dict(context: RequestContext | None = None) -> dict[str, Any]:
    """oslo.context's dict form (``to_dict()`` keys) of *context* (default: the
    current one; ``{}`` without one), without making an oslo object (which would
    become oslo's thread-local current context when there is none)."""
    ctx = context if context is not None else get_current()
    if ctx is None:
        return {}
    return {
        "request_id": ctx.request_id,
        "global_request_id": ctx.global_request_id,
        "user": ctx.user_id,
        "project_id": ctx.project_id,
        "domain": ctx.domain_id,
        "user_domain": ctx.user_domain_id,
        "project_domain": ctx.project_domain_id,
        "roles": list(ctx.roles),
        "is_admin": ctx.is_admin,
    }


def from_oslo(oslo_context: Any) -> RequestContext:
    """crosstrace's context for an oslo.context ``RequestContext`` (or any object
    with the same attributes): the same ids (when valid) and identity."""

    def attr(name: str) -> Any:
        return getattr(oslo_context, name, None)

    request_id = attr("request_id")
    global_id = attr("global_request_id")
    ctx = RequestContext.__new__(RequestContext)
    ctx.untraced = False
    ctx.request_id = (
        request_id if isinstance(request_id, str) and is_valid_request_id(request_id) else None
    ) or generate_request_id()
    ctx.global_request_id = (
        global_id if isinstance(global_id, str) and is_valid_request_id(global_id) else None
    )
    ctx.user_id = _identity(attr("user_id"))
    ctx.project_id = _identity(attr("project_id"))
    ctx.domain_id = _identity(attr("domain_id"))
    ctx.user_domain_id = _identity(attr("user_domain_id"))
    ctx.project_domain_id = _identity(attr("project_domain_id"))
    ctx.roles = _roles(attr("roles"))
    ctx.is_admin = attr("is_admin") is True
    return ctx


def from_oslo_dict(
    values: Mapping[str, Any], request_id: str | None = None, global_request_id: str | None = None
) -> RequestContext:
    """crosstrace's context from oslo.context's dict form (``to_dict()``).

    *request_id*/*global_request_id* replace the dict's ids when given (a
    receiver makes its own local id); the identity comes from the dict.
    """
    rid = request_id if request_id is not None else values.get("request_id")
    if not (isinstance(rid, str) and is_valid_request_id(rid)):
        rid = generate_request_id()
    grid = global_request_id if global_request_id is not None else values.get("global_request_id")
    if not (isinstance(grid, str) and is_valid_request_id(grid)):
        grid = None
    return context_from_dict(values, rid, grid)


def context_from_dict(
    values: Mapping[str, Any], request_id: str, global_request_id: str | None
) -> RequestContext:
    """:func:`from_oslo_dict` with ids the caller already validated (or made):
    the identity from *values*, the ids as given. For hot paths."""
    ctx = RequestContext.__new__(RequestContext)
    ctx.untraced = False
    ctx.request_id = request_id
    ctx.global_request_id = global_request_id
    # One call per RPC message: unrolled (oslo's to_dict() names first).
    get = values.get
    ctx.user_id = _identity(get("user") or get("user_id"))
    ctx.project_id = _identity(get("project_id") or get("project") or get("tenant"))
    ctx.domain_id = _identity(get("domain") or get("domain_id"))
    ctx.user_domain_id = _identity(get("user_domain") or get("user_domain_id"))
    ctx.project_domain_id = _identity(get("project_domain") or get("project_domain_id"))
    ctx.roles = _roles(get("roles"))
    ctx.is_admin = get("is_admin") is True
    return ctx
