"""The web UI of ``crosstrace serve``: pages, templates and static files.

:func:`mount_web` adds the pages (``/``, ``/traces``, ``/requests/...``, ``/map``,
``/services``) and ``/static`` to the query API's FastAPI app, so they share its
port, its store and its token check. Everything the browser loads comes from
this package (templates/, static/, static/vendor/): no build step, no CDN.

The waterfall model (:mod:`crosstrace.server.web.waterfall`) has no web
dependency, so ``crosstrace show`` uses it too; this module imports FastAPI and
Jinja2 only when :func:`mount_web` is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from fastapi import FastAPI

    from crosstrace.server.auth import TokenSet
    from crosstrace.server.auth.access import Access
    from crosstrace.server.store import Store

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "mount_web", "templates"]

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
STATIC_DIR: Final = Path(__file__).parent / "static"


def templates() -> Any:
    """The Jinja2 templates with the helpers every page uses."""
    from fastapi.templating import Jinja2Templates

    from crosstrace import __version__
    from crosstrace.server.web import present

    env = Jinja2Templates(directory=str(TEMPLATES_DIR))
    env.env.globals.update(
        static=lambda path: f"/static/{path}?v={__version__}",
        fmt_duration=present.format_duration,
        fmt_time=present.format_time,
        fmt_offset=present.format_offset,
        level_class=present.level_class,
        bar=present.bar,
        sparkline=present.sparkline_points,
        windows=present.WINDOWS,
        version=__version__,
    )
    return env


def mount_web(
    app: FastAPI,
    store: Store,
    *,
    tokens: TokenSet | None = None,
    access: Access | None = None,
) -> FastAPI:
    """Add the UI to *app* (the query API) over *store*; returns *app*. Who may
    read what is *access* (default: the API's, ``app.state.access``; else one of
    *tokens*)."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles

    from crosstrace.server.query.diagnose import Diagnoser
    from crosstrace.server.web.pages import SECURITY_HEADERS, PageError, build_router
    from crosstrace.server.web.session import LoginRequired, WebAuth, login_url

    env = templates()
    # The API's diagnoser (its error index, its usual durations), else one of our own.
    diagnoser = getattr(app.state, "diagnoser", None) or Diagnoser(store)
    access = access or getattr(app.state, "access", None)
    auth = WebAuth(tokens, access)
    sampling = getattr(app.state, "sampling", None)
    app.include_router(build_router(store, diagnoser, auth, env, sampling))
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    @app.exception_handler(LoginRequired)
    def login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    @app.exception_handler(PageError)
    def page_error(request: Request, exc: PageError) -> HTMLResponse:
        response: HTMLResponse = env.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status, "message": exc.message, "login_required": auth.required},
            status_code=exc.status,
        )
        response.headers.update(SECURITY_HEADERS)
        if exc.status == 503:
            response.headers["Retry-After"] = "5"
        return response

    return app
