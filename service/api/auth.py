"""Authentication: the check in front of every protected route (the describe fast path included), and /v3/session.

In the stack only when a tokens file is configured (service.api.app), so an anonymous deployment pays
nothing. A request passes with `Authorization: Bearer <token>` for a token in the file, or with the
session cookie `POST /v3/session` issued for one (service.api.sessions); anything else is answered
here, 401 with `WWW-Authenticate: Bearer` and a pcluster-shaped `{"message"}`, before any database
query or AWS call. /healthz, /readyz, /openapi.json, the status board's page and assets, and /metrics
(unless STATUSCACHE_METRICS_AUTH=1) stay open: they hold no image data.

The caller's name goes into `scope["statuscache.caller"]` for whatever runs inside (the live-lookup
budget) and outside (logs), and is logged with each request. Tokens and cookies are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.instrument import FastAnswer, Shortcut, request_context
from service.api.requests import two_headers
from service.api.sessions import KEY_NAME, SessionRefused, Sessions, cookie_value
from service.api.state import AppState
from service.api.tokens import Caller, TokenFile

log = logging.getLogger(__name__)

CALLER = "statuscache.caller"
SESSION_PATH = "/v3/session"
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/"})
# The status board's static assets: the page and its scripts hold no data (that comes from the API).
PUBLIC_PREFIXES = ("/board/",)
METRICS_PATH = "/metrics"

MISSING = "Authentication required: send 'Authorization: Bearer <token>', or sign in with POST /v3/session."
INVALID = "The token or session is not valid."
EXPIRED = "The session has expired; sign in again with POST /v3/session."


def is_public(path: str, *, protect_metrics: bool) -> bool:
    """Whether `path` is answered without credentials."""
    if path in PUBLIC_PATHS:
        return True
    if path == METRICS_PATH:
        return not protect_metrics
    return path.startswith(PUBLIC_PREFIXES)


def _json(status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Message, Message]:
    body = orjson.dumps({"message": message})
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def _bad_authorization(authorization: bytes) -> str:
    """Why an Authorization header identified nobody, for the log (never the header itself)."""
    scheme, _, token = authorization.partition(b" ")
    return "unknown token" if scheme.lower() == b"bearer" and token.strip() else "not a bearer token"


def _printable(path: str) -> str:
    # A decoded path can hold a newline: never let a request write a line of its own into the log.
    return path if path.isprintable() else repr(path)


class UntilRevoked:
    """The request's `receive`, also answering "disconnected" once the caller's token leaves the file.

    A long response admitted before a revocation (the change stream) stops when its client goes away,
    and so stops at the reload that revokes its token too. Short answers never call `receive`. Nothing
    waits for reloads on a request's behalf: while it waits in `receive` it is listed in `waiting`, and a
    reload that revokes its caller cancels that wait (Authentication.end_revoked), which then answers
    "disconnected". Waiting for the reload in tasks of its own cost a held stream 4 KB.
    """

    __slots__ = ("caller", "receive", "revoked", "scope", "tokens", "waiting")

    def __init__(
        self, scope: Scope, receive: Receive, *, caller: Caller, tokens: TokenFile,
        waiting: dict[asyncio.Task[Any], UntilRevoked],
    ) -> None:  # fmt: skip
        self.scope = scope
        self.receive = receive
        self.caller = caller
        self.tokens = tokens
        self.waiting = waiting
        # Set by the reload that revoked the caller, just before it cancels the wait.
        self.revoked = False

    async def __call__(self) -> Message:
        if not self.revoked and self.tokens.tokens.holds(self.caller):
            task = asyncio.current_task()
            assert task is not None
            self.waiting[task] = self
            try:
                return await self.receive()
            except asyncio.CancelledError:
                if not self.revoked:
                    raise
                # The cancellation was the revocation's, not the task's: the task carries on.
                task.uncancel()
            finally:
                self.waiting.pop(task, None)
        scope = self.scope
        log.info("%s %s caller=%s: token revoked, response ended", scope["method"], _printable(scope["path"]),
                 self.caller.name)  # fmt: skip
        return {"type": "http.disconnect"}


class Authentication:
    def __init__(self, app: ASGIApp, *, tokens: TokenFile, state: AppState, protect_metrics: bool) -> None:
        self.app = app
        self.tokens = tokens
        self.state = state
        self.protect_metrics = protect_metrics
        self._sessions: Sessions | None = None
        # The requests of this app waiting in `receive` (a held change stream's, mostly), by task.
        self.waiting: dict[asyncio.Task[Any], UntilRevoked] = {}
        tokens.listeners.append(self.end_revoked)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the awaitable of whoever answers, so a long response (the change stream)
        # holds no frame of this layer for its whole life.
        scope_type = scope["type"]
        if scope_type == "lifespan":
            return self.app(scope, receive, self._after_startup(send))
        if scope_type != "http":
            # No websocket routes: refuse anything else outright rather than think about it.
            return send({"type": "websocket.close", "code": 1008})
        path: str = scope["path"]
        if is_public(path, protect_metrics=self.protect_metrics):
            return self.app(scope, receive, send)
        if path == SESSION_PATH:
            return self._session_endpoint(scope, send)
        authorization, cookie = two_headers(scope, b"authorization", b"cookie")
        if authorization is not None:
            caller = self._bearer(authorization)
            if caller is None:
                return self._refuse(scope, send, INVALID, reason=_bad_authorization(authorization), invalid=True)
            return self._admit(scope, receive, send, caller)
        if cookie is not None and (session := cookie_value(cookie)) is not None:
            return self._admit_session(scope, receive, send, session)
        return self._refuse(scope, send, MISSING, reason="no credentials", invalid=False)

    def answering(self, inner: Shortcut) -> Shortcut:
        """`inner`'s answers from memory, for a request `__call__` would admit: with a token in the file or a valid
        session (its caller in the scope, its line logged, as `__call__` does). Anything else, a refusal included,
        is left to `__call__`, which answers it in full (and logs and counts it once)."""
        protect_metrics, tokens = self.protect_metrics, self.tokens

        def answer(scope: Scope) -> FastAnswer | None:
            path: str = scope["path"]
            if is_public(path, protect_metrics=protect_metrics):
                return inner(scope)
            if path == SESSION_PATH:
                return None
            authorization, cookie = two_headers(scope, b"authorization", b"cookie")
            if authorization is not None:
                caller = tokens.tokens.bearer(authorization)
            elif cookie is not None and (session := cookie_value(cookie)) is not None and self._sessions is not None:
                try:
                    caller = self._sessions.verify(session, tokens=tokens.tokens, now=time.time()).caller
                except SessionRefused:
                    return None
            else:
                return None
            if caller is None:
                return None
            scope[CALLER] = caller.name
            answered = inner(scope)
            if answered is not None and log.isEnabledFor(logging.INFO):
                with request_context(scope):
                    log.info("%s %s caller=%s", scope["method"], _printable(path), caller.name)
            return answered

        return answer

    async def _admit_session(self, scope: Scope, receive: Receive, send: Send, session: str) -> None:
        try:
            sessions = await self._session_keeper()
            caller = sessions.verify(session, tokens=self.tokens.tokens, now=time.time()).caller
        except SessionRefused as refused:
            message = EXPIRED if refused.reason == "expired session" else INVALID
            await self._refuse(scope, send, message, reason=refused.reason, invalid=True, clear_cookie=True)
            return
        await self._admit(scope, receive, send, caller)

    def _admit(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> Awaitable[None]:
        scope[CALLER] = caller.name
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s caller=%s", scope["method"], _printable(scope["path"]), caller.name)
        revocable = UntilRevoked(scope, receive, caller=caller, tokens=self.tokens, waiting=self.waiting)
        return self.app(scope, revocable, send)

    def end_revoked(self) -> None:
        """After a reload: every request waiting in `receive` for a caller no longer in the file stops waiting."""
        tokens = self.tokens.tokens
        for task, waiter in list(self.waiting.items()):
            if not waiter.revoked and not tokens.holds(waiter.caller):
                waiter.revoked = True
                task.cancel()

    def _bearer(self, authorization: bytes) -> Caller | None:
        return self.tokens.tokens.bearer(authorization)

    async def _session_keeper(self) -> Sessions:
        """The session signer, with the deployment's key (read from the database once, at start-up)."""
        if self._sessions is None:
            self._sessions = Sessions(await self.state.runtime.keys.get(KEY_NAME))
        return self._sessions

    def _after_startup(self, send: Send) -> Send:
        """Load the session key before the server takes requests, so no refusal ever waits on the database."""

        async def forward(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    await self._session_keeper()
                except Exception as exc:
                    log.exception("cannot load the session key")
                    message = {"type": "lifespan.startup.failed", "message": f"cannot load the session key: {exc}"}
            await send(message)

        return forward

    async def _refuse(
        self, scope: Scope, send: Send, message: str, *, reason: str, invalid: bool, clear_cookie: bool = False
    ) -> None:
        log.info("%s %s refused: %s", scope["method"], _printable(scope["path"]), reason)
        challenge = b'Bearer realm="statuscache", error="invalid_token"' if invalid else b'Bearer realm="statuscache"'
        headers = [(b"www-authenticate", challenge)]
        if clear_cookie:
            headers.append((b"set-cookie", Sessions.clear_cookie(secure=scope.get("scheme") == "https")))
        metrics = self.state.opened.metrics if self.state.opened is not None else None
        if metrics is not None:
            metrics.auth[reason] += 1
        start, body = _json(401, message, headers)
        await send(start)
        await send(body)

    async def _session_endpoint(self, scope: Scope, send: Send) -> None:
        """POST: trade a bearer token for a session cookie (204). DELETE: clear it (204, no credentials needed)."""
        method = scope["method"]
        secure = scope.get("scheme") == "https"
        if method == "DELETE":
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"set-cookie", Sessions.clear_cookie(secure=secure)), (b"cache-control", b"no-store"),
            ]})  # fmt: skip
            await send({"type": "http.response.body", "body": b""})
            return
        if method != "POST":
            start, body = _json(405, "Method Not Allowed", [(b"allow", b"POST, DELETE")])
            await send(start)
            await send(body)
            return
        authorization = next((value for key, value in scope["headers"] if key == b"authorization"), None)
        caller = self._bearer(authorization) if authorization is not None else None
        if caller is None:
            missing = authorization is None
            await self._refuse(
                scope, send, MISSING if missing else INVALID,
                reason="no credentials" if authorization is None else _bad_authorization(authorization),
                invalid=not missing,
            )
            return
        sessions = await self._session_keeper()
        cookie = sessions.set_cookie(sessions.issue(caller, now=time.time()), secure=secure)
        log.info("%s %s caller=%s: session issued", method, SESSION_PATH, caller.name)
        if self.state.opened is not None:
            self.state.opened.metrics.auth["session_issued"] += 1
        await send({"type": "http.response.start", "status": 204, "headers": [
            (b"set-cookie", cookie), (b"cache-control", b"no-store"),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": b""})
