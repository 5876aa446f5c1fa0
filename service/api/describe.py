"""GET /v3/images/custom/{imageId}: the describe route, its memory of prepared answers, and its fast path.

A served answer (body, ETag, validators) is the same for every request of one record version and
signing window, so it is prepared once and kept. The fast path answers a describe whose record and
prepared answer are both in memory without entering Starlette; it sits inside the app's middleware
stack (see service.api.app), so every middleware still sees every request.

Every answer says where it came from (`X-Cache`) and, when it is not the confirmed truth of now, why
(`X-Cache-Stale`), in addition to `Age` (seconds since AWS last confirmed the record):

    X-Cache: HIT                                   from the cache
    X-Cache: MISS                                  looked up live just now
    X-Cache: STALE   X-Cache-Stale: aws-error      from the cache, but a part could not be confirmed at the
                                                   last look (AWS throttled or failed); a recheck is owed
    X-Cache: STALE   X-Cache-Stale: database-unavailable
                                                   the database is down: the record as this process last read it
    X-Cache: HIT     X-Cache-Stale: unconfirmed    from the cache, not confirmed against AWS for longer than
                                                   STATUSCACHE_STALE_AFTER_SECONDS, or since this process may
                                                   be behind AWS (it has not yet reconciled the region or read
                                                   its events since it started, or that is failing)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.history_params import horizon, horizon_headers
from service.api.instrument import CACHE_KEY, ROUTE_KEY, FastAnswer, FastPath
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
from service.metrics import (
    ANSWER_HIT,
    ANSWER_MISS,
    ANSWER_STALE,
    CACHE_HIT,
    CACHE_MISS,
    CACHE_STALE,
    STALE_AWS_ERROR,
    STALE_UNCONFIRMED,
)
from service.runtime import Runtime
from service.store import queries
from service.support.bounded import BoundedDict

PATH = "/v3/images/custom/{image_id}"
X_CACHE = {outcome: (b"x-cache", outcome.encode()) for outcome in (ANSWER_HIT, ANSWER_MISS, ANSWER_STALE)}
CACHE_LABEL = {ANSWER_HIT: CACHE_HIT, ANSWER_MISS: CACHE_MISS, ANSWER_STALE: CACHE_STALE}
UNCONFIRMED = (b"x-cache-stale", STALE_UNCONFIRMED.encode())
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
    # Encoded once: Starlette would rebuild and re-encode them on every request. With `X-Cache: HIT` for the
    # fast path (only Age, and now and then X-Cache-Stale, is added per answer), and without any X-Cache
    # for the route's other outcomes.
    headers_200: RawHeaders
    headers_304: RawHeaders
    headers_200_bare: RawHeaders
    headers_304_bare: RawHeaders


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
                headers_200=[*headers_200, X_CACHE[ANSWER_HIT]],
                headers_304=[*validators, X_CACHE[ANSWER_HIT]],
                headers_200_bare=headers_200,
                headers_304_bare=validators,
            )
            self._memo[key] = prepared
        return prepared


def unconfirmed(runtime: Runtime, image: CachedImage, now: float) -> bool:
    """Whether a cached answer must say it is unconfirmed: not confirmed against AWS for longer than the
    bound, or not since this process may have fallen behind AWS in the image's region."""
    confirmed = image.confirmed_epoch
    if now - confirmed > runtime.settings.stale_bound_seconds:
        return True
    freshness = runtime.freshness
    if freshness.reconcile_behind_since or freshness.events_behind_since:
        behind_since = freshness.behind_since(image.region)
        return behind_since is not None and confirmed < behind_since
    return False


def answer_headers(
    runtime: Runtime, image: CachedImage, *, hit: bool, stale: str | None = None, historical: bool = False
) -> tuple[str, RawHeaders]:
    """The answer's outcome (ANSWER_*) and its Age, X-Cache and (when it is not the confirmed truth of now)
    X-Cache-Stale headers; stale answers are counted by reason."""
    now = time.time()
    if not hit:
        outcome = ANSWER_MISS
    elif historical:
        outcome = ANSWER_HIT
    elif stale is not None or image.recheck_owed:
        outcome = ANSWER_STALE
        stale = stale or STALE_AWS_ERROR
    else:
        outcome = ANSWER_HIT
        if unconfirmed(runtime, image, now):
            stale = STALE_UNCONFIRMED
    headers = [(b"age", b"%d" % max(0, int(now - image.confirmed_epoch))), X_CACHE[outcome]]
    if stale is not None:
        headers.append((b"x-cache-stale", stale.encode()))
        runtime.metrics.stale_answers[stale] += 1
    return outcome, headers


async def send_prepared(send: Send, prepared: Prepared, *, extra: RawHeaders, if_none_match: str | None) -> None:
    if etag_matches(if_none_match, prepared.etag):
        await send({"type": "http.response.start", "status": 304, "headers": [*prepared.headers_304_bare, *extra]})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": [*prepared.headers_200_bare, *extra]})
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
        more: RawHeaders = []
        if at is not None:
            moment = parse_timestamp(at, name="at")
            past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=moment)
            if past is None or not past.exists:
                raise NotFound(not_found_message(image_id))
            answer = Answer(past, hit=True)
            oldest = horizon(runtime.settings)
            more = [(k.lower().encode(), v.encode()) for k, v in horizon_headers(oldest, past=moment < oldest).items()]
        else:
            # Recently read records are answered without awaiting anything.
            recent = runtime.lookup.recent(region=region, image_id=image_id)
            answer = (
                Answer(recent, hit=True)
                if recent is not None
                else await runtime.lookup.get(region=region, image_id=image_id, caller=caller_of(scope))
            )
        prepared = await self.answers.prepare(runtime, answer.image)
        outcome, extra = answer_headers(
            runtime, answer.image, hit=answer.hit, stale=answer.stale, historical=at is not None
        )
        scope[CACHE_KEY] = CACHE_LABEL[outcome]
        await send_prepared(send, prepared, extra=[*extra, *more], if_none_match=header(scope, b"if-none-match"))


def caller_of(scope: Scope) -> str:
    """Whom a live lookup is charged to: the authenticated caller (set by the authentication middleware in
    `scope["statuscache.caller"]`), else the client's address (behind a proxy, uvicorn's --proxy-headers and
    --forwarded-allow-ips make that the real client's)."""
    caller = scope.get("statuscache.caller")
    if caller:
        return str(caller)
    client = scope.get("client")
    return str(client[0]) if client else ""


class FastDescribe(FastPath):
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
        if len(image_id) > IMAGE_ID_MAX_LENGTH or IMAGE_ID_PATTERN.fullmatch(image_id) is None:
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
        if image is None or image.recheck_owed:
            # A record owing a look at AWS is answered STALE by the route.
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
        now = time.time()
        extra = [(b"age", b"%d" % max(0, int(now - image.confirmed_epoch)))]
        if unconfirmed(runtime, image, now):
            extra.append(UNCONFIRMED)
            runtime.metrics.stale_answers[STALE_UNCONFIRMED] += 1
        for key, value in scope["headers"]:
            if key == b"if-none-match":
                if etag_matches(value.decode("latin-1"), prepared.etag):
                    return 304, [*prepared.headers_304, *extra], b""
                break
        return 200, [*prepared.headers_200, *extra], prepared.body
