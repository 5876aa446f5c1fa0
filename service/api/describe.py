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
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.history_routes import horizon, horizon_headers
from service.api.instrument import CACHE_KEY, ROUTE_KEY, FastAnswer, FastPath, send_answer
from service.api.query import parse
from service.api.requests import etag_matches, header, parse_timestamp, region_from, validate_image_id
from service.api.state import AppState
from service.domain import describe
from service.domain.models import CachedImage
from service.errors import BadRequest, NotFound
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
from service.settings import Settings
from service.store import queries
from service.support.bounded import BoundedDict

PATH = "/v3/images/custom/{image_id}"
X_CACHE = {outcome: (b"x-cache", outcome.encode()) for outcome in (ANSWER_HIT, ANSWER_MISS, ANSWER_STALE)}
X_CACHE_HIT = X_CACHE[ANSWER_HIT]
CACHE_LABEL = {ANSWER_HIT: CACHE_HIT, ANSWER_MISS: CACHE_MISS, ANSWER_STALE: CACHE_STALE}
UNCONFIRMED = (b"x-cache-stale", STALE_UNCONFIRMED.encode())
PREFIX = "/v3/images/custom/"
PREFIX_LENGTH = len(PREFIX)
PREPARED_MAX_ENTRIES = 20_000
ASKED_MAX_ENTRIES = 20_000

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Prepared:
    """A served answer's bytes and headers, the same for every request of one version and signing window."""

    version: int
    window: int | None
    body: bytes
    etag: str
    # Encoded once: Starlette would rebuild and re-encode them on every request. Each answer adds its own
    # X-Cache and Age (and now and then X-Cache-Stale, or the horizon of a past answer).
    headers_200: RawHeaders
    headers_304: RawHeaders


def etag_for(image: CachedImage, window: int | None) -> str:
    # The signing window is part of the tag: a client revalidating after it gets a freshly signed URL.
    return f'"{image.version}.{window}"' if window is not None else f'"{image.version}"'


def signing_window(runtime: Runtime, image: CachedImage) -> int | None:
    return runtime.signer.window() if image.config.signable else None


async def document_body(runtime: Runtime, image: CachedImage) -> bytes:
    """The served describe document: the stored one with the configuration URL signed now."""
    assert image.document is not None
    url, _ = await runtime.signer.url(region=image.region, config=image.config)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(describe.config_url(image.config, url)) + b"},"
    return body + image.document[1:]


class PreparedAnswers:
    """The prepared answer of each image's newest version seen (in its signing window), by (region, image):
    a new version replaces the last one's, so what this holds grows with the images, not with their changes
    (keyed by version, it held every version ever described until its bound emptied it: ~1.5 KB per change).
    Emptied when it grows past its bound."""

    def __init__(self) -> None:
        self._memo: BoundedDict[tuple[str, str], Prepared] = BoundedDict(PREPARED_MAX_ENTRIES)

    def __len__(self) -> int:
        return len(self._memo)

    def get(self, runtime: Runtime, image: CachedImage, key: tuple[str, str] | None = None) -> Prepared | None:
        """The answer prepared for this version of the image (its (region, image id): `key`) in the current signing
        window, if there is one."""
        prepared = self._memo.get(key or (image.region, image.image_id))
        if prepared is None or prepared.version != image.version:
            return None
        return prepared if prepared.window == signing_window(runtime, image) else None

    async def prepare(self, runtime: Runtime, image: CachedImage) -> Prepared:
        prepared = self.get(runtime, image)
        if prepared is None:
            window = signing_window(runtime, image)
            body = await document_body(runtime, image)
            etag = etag_for(image, window)
            validators = [
                (b"etag", etag.encode()),
                (b"last-modified", format_datetime(image.changed_at, usegmt=True).encode()),
                # Revalidate every time (a browser would otherwise guess a freshness from Last-Modified).
                (b"cache-control", b"no-cache"),
            ]
            headers_200 = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *validators]
            prepared = Prepared(version=image.version, window=window, body=body, etag=etag, headers_200=headers_200,
                                headers_304=validators)  # fmt: skip
            key = (image.region, image.image_id)
            held = self._memo.get(key)
            # A past version (a describe at= a moment) never takes the place of a newer one.
            if held is None or held.version <= image.version:
                self._memo[key] = prepared
        return prepared


# The Age header of each of the first hours, made once: a cached answer's is one of these most of the time.
AGE_HEADERS = [(b"age", b"%d" % seconds) for seconds in range(3600)]


def age_header(age: float) -> tuple[bytes, bytes]:
    seconds = max(0, int(age))
    return AGE_HEADERS[seconds] if seconds < 3600 else (b"age", b"%d" % seconds)


def hit_headers(runtime: Runtime, image: CachedImage) -> RawHeaders:
    """A cached answer's X-Cache: HIT and Age, with X-Cache-Stale when it is unconfirmed (Freshness.unconfirmed;
    counted)."""
    now = time.time()
    confirmed = image.confirmed_epoch
    headers = [X_CACHE_HIT, age_header(now - confirmed)]
    if runtime.freshness.unconfirmed(image.region, confirmed, now=now, bound=runtime.settings.stale_bound_seconds):
        headers.append(UNCONFIRMED)
        runtime.metrics.stale_answers[STALE_UNCONFIRMED] += 1
    return headers


def answer_headers(
    runtime: Runtime, image: CachedImage, *, hit: bool, stale: str | None = None, historical: bool = False
) -> tuple[str, RawHeaders]:
    """The answer's outcome (ANSWER_*) and its X-Cache, Age and (when it is not the confirmed truth of now)
    X-Cache-Stale headers; stale answers are counted by reason."""
    if not hit:
        outcome = ANSWER_MISS
    elif historical:
        outcome = ANSWER_HIT
    elif stale is not None or image.recheck_owed:
        outcome = ANSWER_STALE
        stale = stale or STALE_AWS_ERROR
    else:
        return ANSWER_HIT, hit_headers(runtime, image)
    headers = [X_CACHE[outcome], age_header(time.time() - image.confirmed_epoch)]
    if stale is not None:
        headers.append((b"x-cache-stale", stale.encode()))
        runtime.metrics.stale_answers[stale] += 1
    return outcome, headers


def reply(prepared: Prepared, extra: RawHeaders, *, if_none_match: str | None) -> FastAnswer:
    """(status, headers, body) of a prepared answer: 304 when If-None-Match holds its tag; `extra` ends the
    headers (a list of this answer's own)."""
    # Most requests carry no If-None-Match: then not even the call.
    if if_none_match is not None and etag_matches(if_none_match, prepared.etag):
        return 304, [*prepared.headers_304, *extra], b""
    return 200, [*prepared.headers_200, *extra], prepared.body


def question(image_id: str, query: bytes, settings: Settings) -> tuple[str, datetime | None]:
    """What a describe asks, checked: the region (resolved) and the moment (`at`; None: now). BadRequest when
    the id, region or moment is not valid; other parameters are ignored, as pcluster ignores them.

    The one reading of a describe, for the route and for the fast path in front of it alike."""
    validate_image_id(image_id)
    if not query:
        return settings.default_region, None
    text = query.decode("latin-1")
    # The usual query, read as `parse` reads it, without building a dict (and in a str, where `in` is cheaper).
    if text.startswith("region=") and "&" not in text and "%" not in text and "+" not in text:
        return region_from(text[7:], settings), None
    params = parse(query)
    region = region_from(params.get("region"), settings)
    at = params.get("at")
    return region, parse_timestamp(at, name="at") if at is not None else None


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
        region, at = question(image_id, scope["query_string"], runtime.settings)
        more: RawHeaders = []
        if at is not None:
            past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=at)
            if past is None or not past.exists:
                raise NotFound(not_found_message(image_id))
            answer = Answer(past, hit=True)
            oldest = horizon(runtime.settings)
            more = [(k.lower().encode(), v.encode()) for k, v in horizon_headers(oldest, past=at < oldest).items()]
        else:
            # Recently read records are answered without awaiting anything.
            recent = runtime.lookup.recent((region, image_id))
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
        await send_answer(send, reply(prepared, [*extra, *more], if_none_match=header(scope, b"if-none-match")))


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
    answers it in full, so no behaviour lives only here: both read the request with `question` and answer
    with `reply` (and `hit_headers`), and differ only in what they may await and how the answer is sent.

    `answer` is the decision and the bytes, synchronous (nothing awaited, nothing logged): when no middleware
    stands between them, the instrumented app outside calls it itself and sends the answer (service.api.app).
    """

    def __init__(self, app: ASGIApp, route: DescribeImage) -> None:
        self.app = app
        self.state = route.state
        self.answers = route.answers
        # What each describe asked (path, query string) means, once read and found valid, without `at`: its
        # (region, image id). A question's meaning is the settings', which do not change under a running app.
        self._asked: BoundedDict[tuple[str, bytes], tuple[str, str]] = BoundedDict(ASKED_MAX_ENTRIES)

    def answer(self, scope: Scope) -> FastAnswer | None:
        """(status, headers, body) of a cached describe held in memory, or None when the router must answer."""
        runtime = self.state.opened
        if runtime is None or scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        asked = (scope["path"], scope["query_string"])
        key = self._asked.get(asked)
        if key is None:
            key = self._question(asked, runtime.settings)
            if key is None:
                return None
        image = runtime.lookup.recent(key)
        if image is None or image.recheck_owed:
            # A record owing a look at AWS is answered STALE by the route.
            return None
        prepared = self.answers.get(runtime, image, key)
        if prepared is None:
            return None
        # For the instrumentation outside: which route answered, and from the cache.
        scope[ROUTE_KEY] = PATH
        scope[CACHE_KEY] = CACHE_HIT
        return reply(prepared, hit_headers(runtime, image), if_none_match=header(scope, b"if-none-match"))

    def _question(self, asked: tuple[str, bytes], settings: Settings) -> tuple[str, str] | None:
        """The (region, image id) a describe of now asks about (remembered), or None when the route must read it."""
        path, query = asked
        if not path.startswith(PREFIX):
            return None
        image_id = path[PREFIX_LENGTH:]
        try:
            region, at = question(image_id, query, settings)
        except BadRequest:
            return None  # the route answers it
        if at is not None:
            return None
        key = self._asked[asked] = (region, image_id)
        return key
