"""RequestContext: fields, environ parsing, dict round trip, per-task isolation."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import crosstrace
from crosstrace.context import (
    ENV_GLOBAL_REQUEST_ID,
    ENV_REQUEST_ID,
    RequestContext,
    submit,
    use_context,
)
from crosstrace.ids import generate_request_id

GID = "req-11111111-2222-4333-8444-555555555555"


def test_global_id_prefers_global_request_id() -> None:
    ctx = RequestContext(global_request_id=GID)
    assert ctx.global_id == GID
    assert ctx.request_id != GID
    local_only = RequestContext()
    assert local_only.global_id == local_only.request_id


def test_invalid_ids_are_rejected_by_constructor() -> None:
    with pytest.raises(ValueError, match="request_id"):
        RequestContext(request_id="req-not-a-uuid")
    with pytest.raises(ValueError, match="global_request_id"):
        RequestContext(global_request_id=GID.upper())


def test_from_environ_reads_ids_and_keystone_headers() -> None:
    rid = generate_request_id()
    environ = {
        ENV_REQUEST_ID: rid,
        ENV_GLOBAL_REQUEST_ID: GID,
        "HTTP_X_USER_ID": "u1",
        "HTTP_X_PROJECT_ID": "p1",
        "HTTP_X_DOMAIN_ID": "d1",
        "HTTP_X_USER_DOMAIN_ID": "ud1",
        "HTTP_X_PROJECT_DOMAIN_ID": "pd1",
        "HTTP_X_ROLES": "member, admin",
    }
    ctx = RequestContext.from_environ(environ, user_id="override")
    assert ctx.request_id == rid
    assert ctx.global_request_id == GID
    assert ctx.user_id == "override"
    assert (ctx.project_id, ctx.domain_id) == ("p1", "d1")
    assert (ctx.user_domain_id, ctx.project_domain_id) == ("ud1", "pd1")
    assert ctx.roles == ("member", "admin")
    assert ctx.is_admin


def test_from_environ_ignores_invalid_ids() -> None:
    ctx = RequestContext.from_environ({ENV_GLOBAL_REQUEST_ID: "req-x", ENV_REQUEST_ID: "bad"})
    assert ctx.global_request_id is None
    assert ctx.request_id.startswith("req-")


def test_dict_round_trip() -> None:
    ctx = RequestContext(global_request_id=GID, user_id="u", project_id="p", roles=["r"])
    assert RequestContext.from_dict(ctx.to_dict()) == ctx


def test_from_dict_drops_malformed_values() -> None:
    ctx = RequestContext.from_dict(
        {
            "request_id": "evil\n",
            "global_request_id": "x" * 5000,
            "roles": "admin",
            "is_admin": "yes",
        }
    )
    assert ctx.global_request_id is None
    assert ctx.request_id.startswith("req-")
    assert "\n" not in ctx.request_id
    assert ctx.roles == ()
    assert ctx.is_admin is False


def test_logging_values_hold_ids_and_identity_only() -> None:
    ctx = RequestContext(global_request_id=GID, user_id="u", project_id="p")
    values = ctx.get_logging_values()
    assert values["global_request_id"] == GID
    assert values["user_identity"] == "u p - - - -"
    assert not any("token" in key or "password" in key for key in values)


def test_threads_see_their_own_context() -> None:
    seen: dict[str, str | None] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with use_context(RequestContext(global_request_id=generate_request_id())) as ctx:
            barrier.wait()
            current = crosstrace.get_current()
            seen[name] = current.global_request_id if current else None
            assert current is ctx

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"] != seen["b"]
    assert crosstrace.get_current() is None


def test_submit_runs_in_callers_context() -> None:
    ctx = RequestContext(global_request_id=GID)
    with use_context(ctx), ThreadPoolExecutor(1) as pool:
        assert submit(pool, crosstrace.get_current).result() is ctx
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(crosstrace.get_current).result() is None


def test_asyncio_tasks_see_their_own_context() -> None:
    async def task(gid: str) -> str | None:
        with use_context(RequestContext(global_request_id=gid)):
            await asyncio.sleep(0)
            current = crosstrace.get_current()
            return current.global_request_id if current else None

    async def main() -> list[str | None]:
        ids = [generate_request_id() for _ in range(5)]
        results = await asyncio.gather(*(task(i) for i in ids))
        assert results == ids
        return results

    asyncio.run(main())


def test_every_way_of_making_a_context_starts_it_traced() -> None:
    """``untraced`` is an entry point's mark for one request: every
    constructor leaves it False, and it is neither sent onwards nor compared."""
    pytest.importorskip("oslo_context")
    from crosstrace.integrations.oslo_context import context_from_dict, from_oslo

    gid = generate_request_id()
    made = [
        RequestContext(),
        RequestContext.from_environ({ENV_GLOBAL_REQUEST_ID: gid}),
        RequestContext.from_dict({"global_request_id": gid}),
        from_oslo(RequestContext(global_request_id=gid)),
        context_from_dict({"user": "u1"}, generate_request_id(), gid),
    ]
    assert [c.untraced for c in made] == [False] * len(made)
    ctx = made[1]
    twin = RequestContext.from_dict(ctx.to_dict())
    ctx.untraced = True
    assert "untraced" not in ctx.to_dict()
    assert twin.request_id == ctx.request_id
    assert twin == ctx  # the mark is not compared
