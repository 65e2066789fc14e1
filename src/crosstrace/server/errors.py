"""The backend's errors: one root, each error with the HTTP status it answers.

Every error the backend raises on purpose derives from :class:`ServerError`, whose
``status_code`` is the HTTP status an answer about it carries (the way starlette's
``HTTPException`` and h11's ``ProtocolError`` carry theirs). Errors that are also
a built-in kind (a bad value, a failed start) derive from that kind too, so code
that catches ``ValueError`` or ``RuntimeError`` keeps working.
"""

from __future__ import annotations

__all__ = ["BadRequest", "PayloadTooLarge", "ServerError", "Unavailable"]


class ServerError(Exception):
    """Root of the backend's errors. ``status_code``: the HTTP status to answer."""

    status_code: int = 500


class BadRequest(ServerError):
    """The caller sent something the backend cannot use (400)."""

    status_code = 400


class PayloadTooLarge(BadRequest):
    """A request body over the configured limit (413)."""

    status_code = 413


class Unavailable(ServerError):
    """A part the backend needs (the store) cannot serve now; retry later (503)."""

    status_code = 503
