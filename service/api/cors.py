"""Cross-origin reads: CORS headers for the origins STATUSCACHE_CORS_ORIGINS lists, and their preflights.

Outermost in the stack (service.api.app), so a preflight (which never carries credentials) is answered
before authentication, and a 401 still carries the headers a dashboard needs to read it and ask for a
token. A listed origin may send credentials (its Authorization header, or the session cookie where the
browser sends it); any other origin gets no CORS header at all, so a browser lets it read nothing.
In the stack only when origins are configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.instrument import FastAnswer, Shortcut
from service.api.requests import two_headers

ALLOWED_METHODS = b"GET, HEAD, POST, DELETE"
ALLOWED_REQUEST_METHODS = frozenset(ALLOWED_METHODS.decode().split(", "))
ALLOWED_HEADERS = b"Authorization, If-None-Match, If-Modified-Since, Last-Event-ID, Cache-Control, Content-Type"
# What a dashboard reads besides the body: validators, cache state, back-off, the auth challenge.
EXPOSED_HEADERS = b"ETag, Last-Modified, Age, X-Cache, Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE = b"600"
# What an origin not listed gets: no CORS header, only the word that the answer depends on the origin.
VARY = ((b"vary", b"Origin"),)


class Cors:
    def __init__(self, app: ASGIApp, *, origins: Iterable[str]) -> None:
        self.app = app
        # Each listed origin's response headers, built once: a request (a held stream too) shares them.
        self.headers = {origin: _response_headers(origin) for origin in (name.encode() for name in origins)}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: it hands back the awaitable of whoever answers, so a long response (the change stream)
        # holds no frame of this layer for its whole life.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        origin, preflight_method = two_headers(scope, b"origin", b"access-control-request-method")
        if origin is None:
            return self.app(scope, receive, send)
        headers = self.headers.get(origin)
        if scope["method"] == "OPTIONS" and preflight_method is not None:
            return self._preflight(send, origin=origin, allowed=headers is not None, method=preflight_method)
        return self.app(scope, receive, WithCors(send, VARY if headers is None else headers))

    def answering(self, inner: Shortcut) -> Shortcut:
        """`inner`'s answers from memory with this layer's headers, as `__call__` would add them to its answers: a
        preflight is left to `__call__`."""
        headers_for = self.headers

        def answer(scope: Scope) -> FastAnswer | None:
            origin, preflight_method = two_headers(scope, b"origin", b"access-control-request-method")
            if origin is None:
                return inner(scope)
            if scope["method"] == "OPTIONS" and preflight_method is not None:
                return None
            answer = inner(scope)
            if answer is not None:
                answer[1].extend(headers_for.get(origin, VARY))  # a list made for this answer alone
            return answer

        return answer

    async def _preflight(self, send: Send, *, origin: bytes, allowed: bool, method: bytes) -> None:
        if not allowed or method.decode("latin-1") not in ALLOWED_REQUEST_METHODS:
            message = (
                "Cross-origin requests from this origin are not allowed."
                if not allowed
                else f"Cross-origin requests may use {ALLOWED_METHODS.decode()} only."
            )
            body = orjson.dumps({"message": message})
            headers = [
                (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), (b"vary", b"Origin"),
            ]
            if allowed:
                headers += _response_headers(origin)[:2]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [
            *_response_headers(origin),
            (b"access-control-allow-methods", ALLOWED_METHODS),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


class WithCors:
    """A response's `send`, adding the CORS headers to its head. An object with slots, not a closure: a change
    stream holds its `send` for its whole life. Not a coroutine: it hands back the awaitable of the `send` it wraps."""

    __slots__ = ("extra", "send")

    def __init__(self, send: Send, extra: tuple[tuple[bytes, bytes], ...]) -> None:
        self.send = send
        self.extra = extra

    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
        return self.send(message)


def _response_headers(origin: bytes) -> tuple[tuple[bytes, bytes], ...]:
    return (
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
    )
