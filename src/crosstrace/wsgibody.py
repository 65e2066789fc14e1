"""WSGI response bodies that keep the request's context current while the
application produces them: :class:`ContextBody` (the context only) and
:class:`TracedBody` (the context and the server span, which ends when the server
closes the body)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from crosstrace.context import RequestContext, reset_current, set_current
from crosstrace.tracing.serve import Served

__all__ = ["ContextBody", "TracedBody"]


class ContextBody:
    """A response iterable that makes the request context current while the
    application's iterable produces each chunk and while it is closed."""

    __slots__ = ("_close", "_context", "_iter")

    def __init__(self, body: Iterable[bytes], context: RequestContext) -> None:
        self._context = context
        self._iter: Iterator[bytes] | None = None
        self._close = getattr(body, "close", None)
        token = set_current(context)
        try:
            # A generator's code first runs on next(); other iterables may run
            # application code in __iter__ itself.
            self._iter = iter(body)
        finally:
            reset_current(token)

    def __iter__(self) -> ContextBody:
        return self

    def __next__(self) -> bytes:
        token = set_current(self._context)
        try:
            return next(self._iter)  # type: ignore[arg-type]
        finally:
            reset_current(token)

    def close(self) -> None:
        close = self._close
        if close is not None:
            token = set_current(self._context)
            try:
                close()
            finally:
                reset_current(token)


class TracedBody:
    """A streamed body produced under the request context *and* the server
    span (:class:`~crosstrace.tracing.serve.Served`); the span ends when the
    server closes the body."""

    __slots__ = ("_close", "_iter", "_served")

    def __init__(self, body: Iterable[bytes], served: Served) -> None:
        self._served = served
        self._close = getattr(body, "close", None)
        served.enter()
        try:
            self._iter: Iterator[bytes] = iter(body)
        except BaseException as exc:
            served.fail(exc)
            served.leave()
            served.finish()
            raise
        served.leave()

    def __iter__(self) -> TracedBody:
        return self

    def __next__(self) -> bytes:
        served = self._served
        served.enter()
        try:
            return next(self._iter)
        except StopIteration:
            raise
        except Exception as exc:
            served.fail(exc)
            raise
        finally:
            served.leave()

    def close(self) -> None:
        served = self._served
        close = self._close
        try:
            if close is not None:
                served.enter()
                try:
                    close()
                except Exception as exc:
                    served.fail(exc)
                    raise
                finally:
                    served.leave()
        finally:
            served.finish()
