"""GET /v3/images/custom/{imageId}: the describe route, its memory of prepared answers, and its fast path.

A served answer (body, ETag, validators) is the same for every request of one record version and
signing window, so it is prepared once and kept. The fast path answers a describe whose record and
prepared answer are both in memory without entering Starlette; it sits inside the app's middleware
stack (see service.api.app), so every middleware still sees every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.instrument import CACHE_KEY, ROUTE_KEY
from service.api.requests import (
    etag_matches,
    header,
    parse_timestamp,
    query_params,
    region_from,
    validate_image_id,
)
from service.api.state import AppState
from service.domain import describe
from service.domain.models import IMAGE_ID_MAX_LENGTH, IMAGE_ID_PATTERN, CachedImage
from service.errors import NotFound
from service.ingest.lookup import Answer, not_found_message
from service.metrics import CACHE_HIT, CACHE_MISS
from service.runtime import Runtime
from service.store import queries
from service.support.bounded import BoundedDict

PATH = "/v3/images/custom/{image_id}"
HIT = (b"x-cache", b"HIT")
MISS = (b"x-cache", b"MISS")
PREFIX = "/v3/images/custom/"
PREFIX_LENGTH = len(PREFIX)
PREPARED_MAX_ENTRIES = 20_000

RawHeaders = list[tuple[bytes, bytes]]
MemoKey = tuple[str, str, int, int | None]


@dataclass(frozen=True)
class Prepared:
    """A served answer's bytes and headers, the same for every request of one version and signing window."""

    body: bytes
    etag: str
    # Encoded once, by status and X-Cache (hit or miss): Starlette would rebuild and re-encode them on every
    # request. Only Age is added per answer.
    headers_200: RawHeaders
    headers_304: RawHeaders
    headers_200_miss: RawHeaders
    headers_304_miss: RawHeaders


def etag_for(image: CachedImage, window: int | None) -> str:
    # The signing window is part of the tag: a client revalidating after it gets a freshly signed URL.
    return f'"{image.version}.{window}"' if window is not None else f'"{image.version}"'


def memo_key(runtime: Runtime, image: CachedImage) -> MemoKey:
    return (image.region, image.image_id, image.version, runtime.signer.window() if image.config.signable else None)


async def document_body(runtime: Runtime, image: CachedImage) -> bytes:
    """The served describe document: the stored one with the configuration URL signed now."""
    assert image.document is not None
    url, _ = await runtime.signer.url(region=image.region, config=image.config)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(describe.config_url(image.config, url)) + b"},"
    return body + image.document[1:]


class PreparedAnswers:
    """Prepared answers by (region, image, version, signing window); emptied when it grows past its bound."""

    def __init__(self) -> None:
        self._memo: BoundedDict[MemoKey, Prepared] = BoundedDict(PREPARED_MAX_ENTRIES)
        # The dict's own get: the fast path calls it on every answer (a BoundedDict is cleared, never replaced).
        self.get: Callable[[MemoKey], Prepared | None] = self._memo.get

    async def prepare(self, runtime: Runtime, image: CachedImage) -> Prepared:
        key = memo_key(runtime, image)
        prepared = self._memo.get(key)
        if prepared is None:
            body = await document_body(runtime, image)
            etag = etag_for(image, key[3])
            validators = [
                (b"etag", etag.encode()),
                (b"last-modified", format_datetime(image.changed_at, usegmt=True).encode()),
                # Revalidate every time (a browser would otherwise guess a freshness from Last-Modified).
                (b"cache-control", b"no-cache"),
            ]
            headers_200 = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *validators]
            prepared = Prepared(
                body=body,
                etag=etag,
                headers_200=[*headers_200, HIT],
                headers_304=[*validators, HIT],
                headers_200_miss=[*headers_200, MISS],
                headers_304_miss=[*validators, MISS],
            )
            self._memo[key] = prepared
        return prepared


async def send_prepared(
    send: Send, prepared: Prepared, *, image: CachedImage, hit: bool, if_none_match: str | None
) -> None:
    age = (b"age", b"%d" % max(0, int(time.time() - image.confirmed_epoch)))
    if etag_matches(if_none_match, prepared.etag):
        headers = prepared.headers_304 if hit else prepared.headers_304_miss
        await send({"type": "http.response.start", "status": 304, "headers": [*headers, age]})
        await send({"type": "http.response.body", "body": b""})
    else:
        headers = prepared.headers_200 if hit else prepared.headers_200_miss
        await send({"type": "http.response.start", "status": 200, "headers": [*headers, age]})
        await send({"type": "http.response.body", "body": prepared.body})


class DescribeImage:
    """The route: a plain ASGI endpoint, because it is the most-used one.

    The query string and the one header it needs are read straight from the scope, and the prepared
    bytes are sent as they are.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.answers = PreparedAnswers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.state.runtime
        image_id: str = scope["path_params"]["image_id"]
        validate_image_id(image_id)
        params = query_params(scope["query_string"])
        region = region_from(params.get("region"), runtime.settings)
        at = params.get("at")
        if at is not None:
            moment = parse_timestamp(at, name="at")
            past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=moment)
            if past is None or not past.exists:
                raise NotFound(not_found_message(image_id))
            answer = Answer(past, hit=True)
        else:
            # Recently read records are answered without awaiting anything.
            recent = runtime.lookup.recent(region=region, image_id=image_id)
            answer = (
                Answer(recent, hit=True)
                if recent is not None
                else await runtime.lookup.get(region=region, image_id=image_id)
            )
        prepared = await self.answers.prepare(runtime, answer.image)
        scope[CACHE_KEY] = CACHE_HIT if answer.hit else CACHE_MISS
        await send_prepared(
            send, prepared, image=answer.image, hit=answer.hit, if_none_match=header(scope, b"if-none-match")
        )


FastAnswer = tuple[int, RawHeaders, bytes]


class FastDescribe:
    """In front of the router: a describe whose record and prepared answer are both in memory is sent
    straight away. Anything else (a miss, `at=`, bad input, other routes) goes on to the router, which
    answers it in full, so no behaviour lives only here.

    `answer` is the decision and the bytes, synchronous (nothing awaited, nothing logged): when no middleware
    stands between them, the instrumented app outside calls it itself and sends the answer (service.api.app).
    """

    def __init__(self, app: ASGIApp, route: DescribeImage) -> None:
        self.app = app
        self.state = route.state
        self.answers = route.answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self.answer(scope)
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def answer(self, scope: Scope) -> FastAnswer | None:
        """(status, headers, body) of a cached describe held in memory, or None when the router must answer."""
        runtime = self.state.opened
        if (
            runtime is None
            or scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or not scope["path"].startswith(PREFIX)
        ):
            return None
        image_id: str = scope["path"][PREFIX_LENGTH:]
        # is_valid_image_id, written out.
        if len(image_id) > IMAGE_ID_MAX_LENGTH or IMAGE_ID_PATTERN.match(image_id) is None:
            return None
        raw: bytes = scope["query_string"]
        if raw.startswith(b"region=") and b"&" not in raw and b"%" not in raw and b"+" not in raw:
            # The usual query, read as query_params would read it, without building a dict.
            region, at = raw[7:].decode("latin-1"), False
        else:
            params = query_params(raw)
            region, at = params.get("region", ""), "at" in params
        region = region or runtime.settings.default_region
        if at or region not in runtime.settings.regions:
            return None
        image = runtime.lookup.recent(region=region, image_id=image_id)
        if image is None:
            return None
        # What memo_key and send_prepared do, written out: this runs for every cached answer, and each call
        # saved is a few percent of its cost (test_app checks that both paths answer alike).
        window = runtime.signer.window() if image.config.signable else None
        prepared = self.answers.get((region, image_id, image.version, window))
        if prepared is None:
            return None
        # For the instrumentation outside: which route answered, and from the cache.
        scope[ROUTE_KEY] = PATH
        scope[CACHE_KEY] = CACHE_HIT
        age = (b"age", b"%d" % max(0, int(time.time() - image.confirmed_epoch)))
        for key, value in scope["headers"]:
            if key == b"if-none-match":
                if etag_matches(value.decode("latin-1"), prepared.etag):
                    return 304, [*prepared.headers_304, age], b""
                break
        return 200, [*prepared.headers_200, age], prepared.body
