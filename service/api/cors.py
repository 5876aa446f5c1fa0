"""Cross-origin reads: CORS headers for the origins STATUSCACHE_CORS_ORIGINS lists, and their preflights.

Outermost in the stack (service.api.app), so a preflight (which never carries credentials) is answered
before authentication, and a 401 still carries the headers a dashboard needs to read it and ask for a
token. A listed origin may send credentials (its Authorization header, or the session cookie where the
browser sends it); any other origin gets no CORS header at all, so a browser lets it read nothing.
In the stack only when origins are configured.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.requests import two_headers

ALLOWED_METHODS = b"GET, HEAD, POST, DELETE"
ALLOWED_REQUEST_METHODS = frozenset(ALLOWED_METHODS.decode().split(", "))
ALLOWED_HEADERS = b"Authorization, If-None-Match, If-Modified-Since, Last-Event-ID, Cache-Control, Content-Type"
# What a dashboard reads besides the body: validators, cache state, back-off, the auth challenge.
EXPOSED_HEADERS = b"ETag, Last-Modified, Age, X-Cache, Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE = b"600"


class Cors:
    def __init__(self, app: ASGIApp, *, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(origin.encode() for origin in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin, preflight_method = two_headers(scope, b"origin", b"access-control-request-method")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = origin in self.origins
        if scope["method"] == "OPTIONS" and preflight_method is not None:
            await self._preflight(send, origin=origin, allowed=allowed, method=preflight_method)
            return
        extra = _response_headers(origin) if allowed else [(b"vary", b"Origin")]

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, with_cors)

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


def _response_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
        (b"access-control-expose-headers", EXPOSED_HEADERS),
    ]
