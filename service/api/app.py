"""The app factory: routes, error handlers, the lifespan that owns the runtime, and the middleware stack.

The ASGI stack, outermost first:

    middleware given to create_app (in order)   sees every request, cached describes included
    FastDescribe                                 answers describes already prepared in memory
    Starlette (router, error handlers)           everything else
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import builds, changes, describe, history, listing, pages, transitions
from service.api.errors import HANDLERS
from service.api.health import Health
from service.api.state import AppState
from service.runtime import Runtime
from service.settings import Settings

RuntimeOpener = Callable[[Settings], AbstractAsyncContextManager[Runtime]]


class StatusCacheApp:
    """The ASGI application: the composed stack, with the shared state and the inner Starlette app at hand."""

    def __init__(self, *, stack: ASGIApp, state: AppState, starlette: Starlette) -> None:
        self._stack = stack
        self.state = state
        self.starlette = starlette

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    open_runtime: RuntimeOpener | None = None,
    middleware: Sequence[Middleware] = (),
) -> StatusCacheApp:
    """The ASGI app. With `runtime` given (tests) it is used as is; otherwise the lifespan opens one."""
    state = AppState(settings=settings, opened=runtime)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            yield
            return
        opener = open_runtime or (lambda s: Runtime.open(s, poll=True))
        async with opener(settings) as opened:
            state.opened = opened
            # Everything loaded so far (modules, botocore's service models, the engine) lives as long as
            # the process: keep the garbage collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                state.opened = None

    describe_route = describe.DescribeImage(state)
    health = Health(state)
    page_tokens = pages.PageTokens(lambda name: state.runtime.keys.get(name))
    build_routes = builds.Builds(state, page_tokens)
    starlette = Starlette(
        routes=[
            Route(describe.PATH, describe_route, methods=["GET"]),
            Route(history.PATH, history.ImageHistory(state).endpoint, methods=["GET"]),
            Route(listing.PATH, listing.ListImages(state, page_tokens).endpoint, methods=["GET"]),
            Route(changes.PATH, changes.ChangeStream(state).endpoint, methods=["GET"]),
            Route(transitions.PATH, transitions.FleetTransitions(state, page_tokens).endpoint, methods=["GET"]),
            Route(builds.PATH, build_routes.endpoint, methods=["GET"]),
            Route(builds.SUMMARY_PATH, build_routes.summary, methods=["GET"]),
            Route("/stats", health.stats, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    starlette.state.statuscache = state
    stack: ASGIApp = describe.FastDescribe(starlette, describe_route)
    for cls, args, kwargs in reversed(middleware):
        stack = cls(stack, *args, **kwargs)
    return StatusCacheApp(stack=stack, state=state, starlette=starlette)
