"""The app factory: routes, error handlers, the lifespan that owns the runtime, and the middleware stack.

The ASGI stack, outermost first:

    Instrument                                   request ids, counters, latency, log context: every request
    Cors                                         with STATUSCACHE_CORS_ORIGINS: answers preflights, adds headers
    middleware given to create_app (in order)   sees every request, cached describes included
    Authentication                               with STATUSCACHE_API_TOKENS_FILE: 401 before anything else runs
    FastDescribe                                 answers describes already prepared in memory (called by
                                                 Instrument directly when nothing stands between them)
    StreamFront                                  opens change streams (they stay open: no router frames held)
    FastList                                     answers list pages already prepared in memory
    Starlette (router, error handlers)           everything else; inside its 500 handler, DatabaseErrors
                                                 turns "the database cannot answer" into a 503

Authentication and CORS follow from the settings, so an app built from settings that name a tokens
file is never served unprotected; without them neither is in the stack, and costs nothing.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

from service.api import (
    board,
    builds,
    changes,
    describe,
    exposition,
    history,
    image_states,
    imagelogs,
    listing,
    openapi,
    pages,
    subscriptions,
    transitions,
)
from service.api.auth import Authentication
from service.api.cors import Cors
from service.api.errors import HANDLERS, DatabaseErrors
from service.api.health import Health
from service.api.instrument import FastAnswer, Instrument, Shortcut
from service.api.state import AppState
from service.api.tokens import TokenFile
from service.runtime import Runtime
from service.settings import Settings

RuntimeOpener = Callable[[Settings], AbstractAsyncContextManager[Runtime]]


class StatusCacheApp(Instrument):
    """The ASGI application: the composed stack, with the shared state and the inner Starlette app at hand.

    It is the outermost layer, Instrument, itself: one coroutine frame fewer on every request.
    """

    def __init__(
        self,
        *,
        stack: ASGIApp,
        state: AppState,
        starlette: Starlette,
        shortcut: Shortcut | None = None,
        tokens: TokenFile | None = None,
    ) -> None:
        super().__init__(stack, state=state, shortcut=shortcut)
        self.starlette = starlette
        # The tokens file in force (None: anonymous); the runner reloads it on SIGHUP.
        self.tokens = tokens


def fast_answers(fast: describe.FastDescribe, fast_list: listing.FastList) -> Shortcut:
    """The two synchronous answers from memory, as one: a cached describe, else a remembered list page.

    Between FastDescribe and FastList stands only StreamFront, which answers nothing but the stream's path."""
    describe_answer, list_answer = fast.answer, fast_list.answer

    def answer(scope: Scope) -> FastAnswer | None:
        return describe_answer(scope) or list_answer(scope)

    return answer


def create_app(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    open_runtime: RuntimeOpener | None = None,
    middleware: Sequence[Middleware] = (),
) -> StatusCacheApp:
    """The ASGI app. With `runtime` given (tests) it is used as is; otherwise the lifespan opens one.

    Reads the tokens file when the settings name one (ConfigurationError if it cannot be read or parsed).
    """
    state = AppState(settings=settings, opened=runtime)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if runtime is not None:
            yield
            return
        opener = open_runtime or (lambda s: Runtime.open(s, poll=True))
        async with opener(settings) as opened:
            state.opened = opened
            published = metrics.worker_series(opened)
            if published is not None:
                opened.run(published.loop())
            # Everything loaded so far (modules, botocore's service models, the engine) lives as long as
            # the process: keep the garbage collector from walking it again on every full collection.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                state.opened = None

    describe_route = describe.DescribeImage(state)
    page_tokens = pages.PageTokens(lambda name: state.runtime.keys.get(name))
    list_route = listing.ListImages(state, page_tokens)
    stream_route = changes.ChangeStream(state)
    metrics = exposition.MetricsEndpoint(state)
    health = Health(state)
    status_board = board.Board()
    build_routes = builds.Builds(state, page_tokens)
    subscription_routes = subscriptions.Subscriptions(state)
    image_logs = imagelogs.ImageLogs(state, page_tokens)
    starlette = Starlette(
        routes=[
            Route(describe.PATH, describe_route, methods=["GET"]),
            Route(history.PATH, history.ImageHistory(state, page_tokens).endpoint, methods=["GET"]),
            Route(imagelogs.STACK_EVENTS_PATH, image_logs.stack_events, methods=["GET"]),
            Route(imagelogs.LOG_STREAMS_PATH, image_logs.log_streams, methods=["GET"]),
            Route(imagelogs.LOG_EVENTS_PATH, image_logs.log_events, methods=["GET"]),
            Route(listing.PATH, list_route, methods=["GET"]),
            Route(changes.PATH, stream_route, methods=["GET"]),
            Route(image_states.PATH, image_states.ImageStates(state).endpoint, methods=["GET"]),
            Route(transitions.PATH, transitions.FleetTransitions(state, page_tokens).endpoint, methods=["GET"]),
            Route(builds.PATH, build_routes.endpoint, methods=["GET"]),
            Route(builds.SUMMARY_PATH, build_routes.summary, methods=["GET"]),
            Route(subscriptions.PATH, subscription_routes.endpoint, methods=["GET"]),
            Route(subscriptions.REPLAY_PATH, subscription_routes.replay, methods=["POST"]),
            Route("/stats", health.stats, methods=["GET"]),
            Route(exposition.PATH, metrics.endpoint, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route(openapi.PATH, openapi.OpenApi().endpoint, methods=["GET"]),
            Route(board.PAGE_PATH, status_board.page, methods=["GET"]),
            Route(board.ASSET_PATH, status_board.asset, methods=["GET"]),
        ],
        exception_handlers=HANDLERS,
        middleware=[Middleware(DatabaseErrors, state=state)],
        lifespan=lifespan,
    )
    starlette.state.statuscache = state
    fast_list = listing.FastList(starlette, list_route)
    fast = describe.FastDescribe(changes.StreamFront(fast_list, stream_route), describe_route)
    stack: ASGIApp = fast
    # The answers from memory, through the layers that stand between them and the outermost one, each of which
    # has a synchronous form (`answering`): the outermost layer asks it itself, and the connection sends what it
    # gives (service.api.connections). Middleware given to create_app has none: then every request goes the
    # ASGI way, through all of it.
    answers = fast_answers(fast, fast_list)
    tokens = TokenFile(settings.api_tokens_file) if settings.api_tokens_file else None
    if tokens is not None:
        authentication = Authentication(stack, tokens=tokens, state=state, protect_metrics=settings.metrics_auth)
        stack, answers = authentication, authentication.answering(answers)
    shortcut: Shortcut | None = answers
    for cls, args, kwargs in reversed(middleware):
        stack, shortcut = cls(stack, *args, **kwargs), None
    if settings.cors_origins:
        cors = Cors(stack, origins=settings.cors_origins)
        stack, shortcut = cors, cors.answering(shortcut) if shortcut is not None else None
    return StatusCacheApp(stack=stack, state=state, starlette=starlette, shortcut=shortcut, tokens=tokens)
