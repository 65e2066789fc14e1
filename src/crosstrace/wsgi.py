"""WSGI request-id middleware, a drop-in for oslo.middleware's ``request_id`` filter.

For every request it:

* takes a valid inbound ``X-OpenStack-Request-ID`` as the global request id
  (an invalid one is dropped, counted and logged at debug without its value);
* makes a fresh local request id;
* stores both under the ``openstack.*`` environ keys before the application runs
  (or reuses them when oslo.middleware's filter already ran in front);
* makes a :class:`~crosstrace.context.RequestContext` current while the
  application runs and while a streamed body is produced, and clears it after;
* returns the local id in ``x-openstack-request-id`` and each compat header,
  unless the application set that header itself.

When tracing is configured (or a ``tracer=`` is given) the same middleware also
opens the request's SERVER span: it continues the caller's trace from
``traceparent``/``tracestate`` (a signed trigger or OSProfiler's signed headers
force recording), is named ``"METHOD /normalised/{id}/path"`` (or the route
template the application puts in ``environ["crosstrace.route"]``), carries
``http.request.method``, ``url.path``, ``http.response.status_code`` and the
request context's ``openstack.*`` ids, and is the current span while the
application runs and while a streamed body is produced. A 5xx response sets
error status, an exception escaping the application is recorded. Unconfigured,
only the request-id work is done.

PasteDeploy::

    [filter:request_id]
    paste.filter_factory = crosstrace.wsgi:filter_factory
    compat_headers = x-compute-request-id
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from time import thread_time_ns, time_ns
from types import TracebackType
from typing import Any, Final, Protocol

from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    reset_current,
    set_current,
)
from crosstrace.headers import (
    ENV_OSPROFILER_INFO,
    ENV_REQUEST_ID_HEADER,
    ENV_TRACEPARENT,
    ENV_TRACESTATE,
    ENV_TRIGGER,
    HTTP_RESP_HEADER_REQUEST_ID,
    parse_header_list,
)
from crosstrace.httpnames import (
    ATTR_METHOD,
    ATTR_ROUTE,
    ENV_ROUTE,
    PathNormalizer,
    normalize_path,
    server_span_name,
    status_code,
)
from crosstrace.ids import is_valid_request_id
from crosstrace.propagation import extract_context, record_invalid
from crosstrace.tracing.calibration import churn
from crosstrace.tracing.deferred import Describe
from crosstrace.tracing.model import (
    ATTR_DOMAIN_ID,
    ATTR_PROJECT_DOMAIN_ID,
    ATTR_PROJECT_ID,
    ATTR_REQUEST_ID,
    ATTR_USER_ID,
    RemoteContext,
    SpanKind,
)
from crosstrace.tracing.serve import Served, export_untraced, serve
from crosstrace.tracing.spans import (
    NonRecordingSpan,
    Span,
    get_current_span,
    reset_current_span,
    set_current_span,
)
from crosstrace.tracing.tracer import (
    DISABLED,
    SKIP_MEASURED,
    TRACE_ALL,
    Tracer,
    get_tracer,
    span,
)
from crosstrace.wsgibody import ContextBody, TracedBody

__all__ = [
    "ENV_GLOBAL_REQUEST_ID",
    "ENV_REQUEST_ID",
    "ENV_REQUEST_ID_HEADER",
    "ENV_ROUTE",
    "HTTP_RESP_HEADER_REQUEST_ID",
    "IDENTITY_ENVIRON_KEYS",
    "RequestIdMiddleware",
    "filter_factory",
    "parse_header_list",
]


_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class StartResponse(Protocol):
    """The WSGI ``start_response`` callable."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = ...,
        /,
    ) -> Callable[[bytes], object]: ...


WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


#: The environ keys of keystonemiddleware's identity headers.
IDENTITY_ENVIRON_KEYS: Final = (
    "HTTP_X_USER_ID",
    "HTTP_X_PROJECT_ID",
    "HTTP_X_DOMAIN_ID",
    "HTTP_X_USER_DOMAIN_ID",
    "HTTP_X_PROJECT_DOMAIN_ID",
    "HTTP_X_ROLES",
    "HTTP_X_IS_ADMIN_PROJECT",
)
_IDENTITY_SPAN_ATTRS: Final = (
    ("HTTP_X_PROJECT_ID", ATTR_PROJECT_ID),
    ("HTTP_X_PROJECT_DOMAIN_ID", ATTR_PROJECT_DOMAIN_ID),
    ("HTTP_X_DOMAIN_ID", ATTR_DOMAIN_ID),
    ("HTTP_X_USER_ID", ATTR_USER_ID),
)


def _record_identity(span: Span | NonRecordingSpan, environ: Mapping[str, Any]) -> None:
    """The validated identity of the request on its SERVER span."""
    if not span._recording:
        return
    for key, attr in _IDENTITY_SPAN_ATTRS:
        value = environ.get(key)
        if type(value) is str and 0 < len(value) <= 255:
            span.set_attribute(attr, value)


def _adopt_inner_id(environ: Mapping[str, Any], context: RequestContext) -> str:
    """The request's one local id: the id an inner request-id filter put in the
    environ (oslo.middleware's ``RequestId`` inside the application always
    makes its own, and sends it in the response) replaces the context's."""
    inner = environ.get(ENV_REQUEST_ID)
    if inner is not context.request_id and type(inner) is str and is_valid_request_id(inner):
        context.request_id = inner
    return context.request_id


# The trace headers as WSGI environ keys (the rest are derived on demand).
_ENV_HEADERS = {
    "traceparent": ENV_TRACEPARENT,
    "tracestate": ENV_TRACESTATE,
}


def _environ_getter(environ: Mapping[str, Any]) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        key = _ENV_HEADERS.get(name) or "HTTP_" + name.upper().replace("-", "_")
        value = environ.get(key)
        return value if isinstance(value, str) else None

    return get


class RequestIdMiddleware:
    """Give each request a local id and adopt a valid inbound global id; open
    the request's SERVER span when tracing is on.

    :param app: the WSGI application to wrap.
    :param compat_headers: extra response headers that carry the local id too
        (e.g. ``x-compute-request-id``), as names or a space/comma separated string.
    :param tracer: the tracer of this service (e.g. ``crosstrace.get_tracer("nova-api")``);
        default: the configured one, looked up per request. With neither, no span.
    :param path_normalizer: turns ``PATH_INFO`` into the span name's path part
        (default :func:`crosstrace.httpnames.normalize_path`: ids become ``{id}``).
    """

    __slots__ = (
        "_resp_headers",
        "app",
        "compat_headers",
        "path_normalizer",
        "tracer",
        "trust_identity_headers",
        "untrusted_identity_headers",
    )

    def __init__(
        self,
        app: WSGIApplication,
        compat_headers: str | Iterable[str] | None = (),
        tracer: Tracer | None = None,
        path_normalizer: PathNormalizer | None = None,
        trust_identity_headers: bool = False,
    ) -> None:
        if not callable(app):
            raise ValueError("app must be a WSGI application (a callable)")
        self.app = app
        #: Whether keystonemiddleware's ``authtoken`` runs in front (or inside,
        #: rewriting the environ before the response starts): only then are the
        #: identity headers (``X-Project-Id``, ``X-Roles`` ...) believed. Else they
        #: are removed from the environ and counted.
        self.trust_identity_headers = trust_identity_headers
        self.untrusted_identity_headers = 0
        self.tracer = tracer
        self.path_normalizer: PathNormalizer = path_normalizer or normalize_path
        self.compat_headers = tuple(
            h for h in parse_header_list(compat_headers) if h != HTTP_RESP_HEADER_REQUEST_ID
        )
        self._resp_headers = (HTTP_RESP_HEADER_REQUEST_ID, *self.compat_headers)
        if tracer is not None:
            self._price_with(tracer)

    def _price_with(self, tracer: Tracer) -> None:
        """Let *tracer*'s budget price requests through this middleware."""
        if not tracer.costs.has_probe:
            tracer.costs.add_probe(self._probe)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Serve one request under its request context."""
        trusted = self.trust_identity_headers
        if not trusted:
            for key in IDENTITY_ENVIRON_KEYS:
                if key in environ:
                    del environ[key]
                    self.untrusted_identity_headers += 1
        # Reuse ids an earlier request-id filter (oslo.middleware's) put there.
        earlier_id = environ.get(ENV_REQUEST_ID)
        global_id = environ.get(ENV_GLOBAL_REQUEST_ID)
        source = "an earlier request-id filter"
        if global_id is None:
            global_id = environ.get(ENV_REQUEST_ID_HEADER)
            if global_id is not None:
                # Validated once, by from_environ below; removed again if refused.
                # A repeated header arrives joined with "," and never matches.
                environ[ENV_GLOBAL_REQUEST_ID] = global_id
                source = "the X-OpenStack-Request-ID header"
        context = RequestContext.from_environ(environ)
        if global_id is not None and context.global_request_id is None:
            # Refused: never left where the application, an inner request-id
            # filter or a log could see it. (oslo.middleware matches with ``$``,
            # which lets a trailing newline in.)
            del environ[ENV_GLOBAL_REQUEST_ID]
            environ.pop(ENV_REQUEST_ID_HEADER, None)
            record_invalid(source, global_id)
        request_id = context.request_id
        if request_id is not earlier_id:
            environ[ENV_REQUEST_ID] = request_id
        resp_headers = self._resp_headers
        status_line = ""

        def _start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: _ExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            nonlocal status_line
            status_line = status
            request_id = _adopt_inner_id(environ, context)
            for name in resp_headers:
                for existing, _ in headers:
                    if existing.lower() == name:
                        break
                else:
                    headers.append((name, request_id))
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        tracer = self.tracer or self._default_tracer()
        if tracer is None:
            token = set_current(context)
            try:
                body = self.app(environ, _start_response)
            finally:
                reset_current(token)
            return _context_body(body, environ, context)
        left = tracer.skips_left  # the budget's countdown (see skip_request)
        if left:
            tracer.skips_left = left - 1
            skip = 1
        else:
            skip = tracer.skip_request() if tracer.trace_threshold < TRACE_ALL else 0
        if skip:
            # Over a small budget: this request runs as with tracing off (its
            # context marked untraced, its spans do nothing); only a failure
            # or a slow run exports its server span, built after the fact. One
            # in a few is measured: the budget's control group.
            if skip == SKIP_MEASURED:
                return self._measured_untraced(environ, context, tracer, _start_response)
            start_ns = time_ns()
            context.untraced = True
            token = set_current(context)
            # A span current here (an entry point nested in another) is not this request's.
            span_token = set_current_span(None) if get_current_span() is not None else None
            try:
                body = self.app(environ, _start_response)
            except Exception as exc:
                self._after_the_fact(environ, context, tracer, start_ns, 0, exc)
                raise
            finally:
                if span_token is not None:
                    reset_current_span(span_token)
                reset_current(token)
            try:
                failed = "5" <= status_line < "6"
            except TypeError:  # not a str: not a status this can read
                failed = False
            if failed or time_ns() - start_ns >= tracer.slow_ns > 0:
                code = status_code(status_line)
                self._after_the_fact(environ, context, tracer, start_ns, code, None)
            return _context_body(body, environ, context)
        try:
            served = self._serve(environ, context, tracer)
        except Exception:  # tracing must never break the request
            served = Served(context)
        served.enter()
        span = served.span

        def _traced_start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: _ExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            served.status(status_code(status))
            if trusted:
                # authtoken, wherever it sits in the pipeline, has replaced the
                # client's identity headers with the token's by now.
                _record_identity(span, environ)
            if environ.get(ENV_REQUEST_ID) is not context.request_id:
                span.set_attribute(ATTR_REQUEST_ID, _adopt_inner_id(environ, context))
            return _start_response(status, headers, exc_info)

        try:
            body = self.app(environ, _traced_start_response)
        except BaseException as exc:
            served.fail(exc)
            served.leave()
            served.finish()
            raise
        served.leave()
        route = environ.get(ENV_ROUTE)
        if route is not None and span._recording and isinstance(route, str):
            span.update_name(f"{span.attributes[ATTR_METHOD]} {route}")  # type: ignore[union-attr]
            span.set_attribute(ATTR_ROUTE, route)
        if type(body) is list or type(body) is tuple:
            served.finish()
            return body
        return TracedBody(body, served)

    def _measured_untraced(
        self,
        environ: dict[str, Any],
        context: RequestContext,
        tracer: Tracer,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """An untraced request whose CPU time is measured: the untraced path
        above, step for step; what runs around the application is timed with
        the path's own steps or without them, in turn (what
        :meth:`~crosstrace.tracing.budget.CostModel.skipped_ns` is priced
        from), and the whole request."""
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        with_steps = tracer.costs.floor_turn()
        status_line: Any = ""

        def capture(
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal status_line
            status_line = status
            return start_response(status, headers, exc_info)

        t0 = thread_time_ns() if with_steps else 0
        start_ns = time_ns()
        context.untraced = True
        span_token = set_current_span(None) if get_current_span() is not None else None
        if not with_steps:
            t0 = thread_time_ns()
        t1 = thread_time_ns()
        token = set_current(context)
        try:
            body = self.app(environ, capture)
        except Exception as exc:
            self._after_the_fact(environ, context, tracer, start_ns, 0, exc)
            raise
        finally:
            if span_token is not None:
                reset_current_span(span_token)
            reset_current(token)
        t2 = t3 = thread_time_ns()
        if not with_steps:
            t3 = thread_time_ns()
        try:
            failed = "5" <= status_line < "6"
        except TypeError:  # not a str: not a status this can read
            failed = False
        late = failed or time_ns() - start_ns >= tracer.slow_ns > 0
        if with_steps:
            t3 = thread_time_ns()
        tracer.costs.observe_untraced(with_steps, t1 - t0 + t3 - t2, t3 - t0)
        if late:
            code = status_code(status_line)
            self._after_the_fact(environ, context, tracer, start_ns, code, None)
        return _context_body(body, environ, context)

    def _after_the_fact(
        self,
        environ: dict[str, Any],
        context: RequestContext,
        tracer: Tracer,
        start_ns: int,
        code: int,
        exc: BaseException | None,
    ) -> None:
        """The server span of an untraced request that failed or was slow."""
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        export_untraced(context, tracer, self._describer(environ, tracer), start_ns, code, exc)

    #: The tracer of a request when none was given (the configured one).
    _default_tracer = staticmethod(get_tracer)

    def _probe(self, tracer: Tracer | None, children: int) -> Callable[[], None]:
        """One request through a copy of this middleware, for the cost model:
        traced by *tracer*, or untraced when it is ``None``; the application
        opens *children* spans of three attributes."""
        cls = RequestIdMiddleware if tracer is not None else _UntracedCopy
        mw = cls(
            _probe_app(children, tracer or DISABLED),
            self.compat_headers,
            tracer,
            self.path_normalizer,
        )
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/probe/1", "SERVER_NAME": "probe"}

        def run() -> None:
            for _ in mw(dict(environ), _probe_start_response):
                pass

        return run

    def _describer(self, environ: dict[str, Any], tracer: Tracer) -> Describe:
        """What the request's server span is made of, read when asked for."""
        normalize = self.path_normalizer

        def describe() -> tuple[str, dict[str, Any], RemoteContext]:
            name, attrs = server_span_name(
                environ.get("REQUEST_METHOD") or "GET", environ.get("PATH_INFO") or "/", normalize
            )
            remote = extract_context(_environ_getter(environ), tracer)
            return name, attrs, remote

        return describe

    def _serve(self, environ: dict[str, Any], context: RequestContext, tracer: Tracer) -> Served:
        if self.tracer is None:  # the configured tracer, which may have changed
            self._price_with(tracer)
        describe = self._describer(environ, tracer)
        forced = (tracer.trigger_keys and ENV_TRIGGER in environ) or (
            tracer.osprofiler_keys and ENV_OSPROFILER_INFO in environ
        )
        return serve(
            context,
            tracer,
            kind=SpanKind.SERVER,
            describe=describe,
            traceparent=environ.get(ENV_TRACEPARENT),
            forced=bool(forced),
            budget=False,  # asked already
        )


def _context_body(
    body: Iterable[bytes], environ: Mapping[str, Any], context: RequestContext
) -> Iterable[bytes]:
    """The response body as returned, or wrapped so that the request context
    is current while the application's iterable produces it."""
    if type(body) is list or type(body) is tuple:
        return body
    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
        return body
    return ContextBody(body, context)


def _no_tracer(service_name: str | None = None) -> Tracer | None:
    return None


class _UntracedCopy(RequestIdMiddleware):
    """The middleware with tracing off whatever is configured (cost probes)."""

    __slots__ = ()
    _default_tracer = staticmethod(_no_tracer)


def _probe_start_response(
    status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
) -> Callable[[bytes], object]:
    return _discard


def _discard(data: bytes) -> None:
    return None


def _probe_app(children: int, tracer: Tracer) -> WSGIApplication:
    attrs = {"probe.a": 1, "probe.b": "x", "probe.c": True}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        churn()
        for _ in range(children):
            with span("probe.child", SpanKind.INTERNAL, attrs, tracer):
                churn()
        start_response("200 OK", [])
        return [b""]

    return app


def filter_factory(
    global_conf: Mapping[str, Any], **local_conf: Any
) -> Callable[[WSGIApplication], RequestIdMiddleware]:
    """PasteDeploy ``paste.filter_factory``.

    ``compat_headers`` (space or comma separated) and ``service_name`` (the
    ``service.name`` of this pipeline's spans, when several services share a
    process) are read from the filter section, falling back to ``[DEFAULT]``.
    With ``configure = true``, tracing is configured when the pipeline is built
    (:func:`crosstrace.configure` with the ``CROSSTRACE_*`` environment and
    ``service_name``) unless the process configured it already: a service
    adopts crosstrace through its ``api-paste.ini`` alone.
    """
    conf = dict(global_conf)
    conf.update(local_conf)
    compat = parse_header_list(conf.get("compat_headers"))
    # A paste pipeline runs behind (or around) authtoken: identity headers are
    # keystonemiddleware's unless the filter section says otherwise.
    trust = str(conf.get("trust_identity_headers", "true")).strip().lower() not in (
        "false",
        "no",
        "off",
        "0",
    )

    service = conf.get("service_name")
    wants_configure = str(conf.get("configure", "")).strip().lower() in ("1", "true", "yes", "on")
    if wants_configure and get_tracer() is None:
        from crosstrace.config import configure

        configure(**({"service_name": str(service)} if service else {}))

    def _filter(app: WSGIApplication) -> RequestIdMiddleware:
        # A named service gets its own tracer (resolved when the pipeline is
        # built, so configure() must run first); else the configured default.
        tracer = get_tracer(str(service)) if service else None
        return RequestIdMiddleware(
            app, compat_headers=compat, tracer=tracer, trust_identity_headers=trust
        )

    return _filter
