"""GET /v3/images/custom?imageStatus=: pcluster's ListImages from the cache, pages prepared and remembered.

A dashboard that does not stream polls these pages, so a page is served like a prepared describe answer:
its bytes, ETag and headers are built once and sent as they are. A page is remembered until a local write
(at once) or for at most STATUSCACHE_READ_CACHE_SECONDS (other replicas' writes); one request past half
of that rebuilds it in the background while the others are still answered from memory, so polling clients
do not wait for the rebuild. Each page is kept plain and gzipped (for clients that accept it; the gzipped
one carries the entity tag made weak, see service.api.compression).

A page is remembered by its request's raw nextToken: only a token that verified (service.api.pages) ever
built a page, so a forged one never finds a remembered page and is refused when its page is built.

With `at=T` it answers as it would have at T (same shape, same pagination), from the transitions: the
fleet as the cache knew it then, consistent with describe `at=T` (service.store.fleet). Those pages are
not remembered (each moment is asked once) and go to the router.

A region no reconcile pass has listed yet (by any replica: service.store.listings) has no list to give:
the images the cache holds then are those events and describes brought, not the fleet. Its list answers
503 with Retry-After (pcluster, unable to list, answers 500); `at=` a moment before the region was first
listed answers 404 (that moment has no list, and never will: nothing to retry). Once listed, a page not confirmed
by a pass for longer than the staleness bound, or since this process may be behind AWS in the region,
carries `X-Cache-Stale: unconfirmed`, as describes do.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import pages
from service.api.compression import LEVEL, MIN_SIZE, Compressor, accepts_gzip, weak
from service.api.describe import UNCONFIRMED
from service.api.history_routes import horizon, horizon_headers
from service.api.instrument import CACHE_KEY, ROUTE_KEY, FastAnswer, FastPath, send_answer
from service.api.query import parse
from service.api.requests import etag_matches, header, parse_timestamp, region_from
from service.api.state import AppState
from service.domain.describe import iso_time
from service.domain.listing import IMAGE_STATUS_FILTERS
from service.errors import BadRequest, NotFound, NotYetListed
from service.metrics import CACHE_HIT, STALE_UNCONFIRMED
from service.runtime import Runtime
from service.settings import Settings
from service.store import fleet, queries
from service.store.listings import Listing
from service.support.bounded import BoundedDict
from service.support.singleflight import SingleFlight

PATH = "/v3/images/custom"
# Pages are ~15 KB: a thousand (any region, filter and token) is 15 MB at most.
PAGE_MAX_ENTRIES = 1000
ASKED_MAX_ENTRIES = 10_000
# Pages of the list as it stood at a moment (`at=`).
AT_PAGE_SIZE = 100
# Seconds a client is asked to wait for a region's first listing.
NOT_YET_LISTED_RETRY_SECONDS = 5

PageKey = tuple[str, str, str | None]
RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    etag: str
    headers_200: RawHeaders
    headers_304: RawHeaders
    # The same page gzipped, for clients that accept it (None: too small to be worth it).
    gzipped_headers_200: RawHeaders | None
    gzipped_headers_304: RawHeaders | None
    gzipped: bytes | None
    # The local write generation it was built in, and when (monotonic).
    generation: int
    built_at: float
    # When (unix time) a reconcile pass last listed the page's region, as the database said at build time.
    listed_at: float


def page_body(listed: queries.ListPage, token: str | None) -> bytes:
    """pcluster's `{"images": [...], "nextToken": ...}`, as orjson would write it."""
    body = b'{"images":' + listed.images_json
    if token is not None:
        body += b',"nextToken":' + orjson.dumps(token)
    return body + b"}"


def prepare(body: bytes, *, generation: int, built_at: float, listed_at: float) -> Page:
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    validators = [(b"etag", etag.encode()), (b"cache-control", b"no-cache")]
    gzipped = gzipped_200 = gzipped_304 = None
    if len(body) >= MIN_SIZE:
        # The coding depends on the request's Accept-Encoding: caches must keep the two apart.
        validators.append((b"vary", b"Accept-Encoding"))
        gzipped = gzip.compress(body, LEVEL)
        gzipped_304 = [(b"etag", weak(etag).encode()), (b"cache-control", b"no-cache"), (b"vary", b"Accept-Encoding")]
        gzipped_200 = [
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
            (b"content-length", b"%d" % len(gzipped)),
            *gzipped_304,
        ]
    return Page(
        body=body,
        etag=etag,
        headers_200=[(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *validators],
        headers_304=validators,
        gzipped_headers_200=gzipped_200,
        gzipped_headers_304=gzipped_304,
        gzipped=gzipped,
        generation=generation,
        built_at=built_at,
        listed_at=listed_at,
    )


def page_answer(page: Page, scope: Scope, runtime: Runtime, region: str) -> FastAnswer:
    """(status, headers, body) of a prepared page for this request; the headers are a list of its own."""
    gzipped = page.gzipped
    compressed = gzipped is not None and accepts_gzip(header(scope, b"accept-encoding"))
    if etag_matches(header(scope, b"if-none-match"), page.etag):
        if compressed and page.gzipped_headers_304 is not None:
            answer: FastAnswer = 304, [*page.gzipped_headers_304], b""
        else:
            answer = 304, [*page.headers_304], b""
    elif compressed and gzipped is not None and page.gzipped_headers_200 is not None:
        answer = 200, [*page.gzipped_headers_200], gzipped
    else:
        answer = 200, [*page.headers_200], page.body
    # Confirmed as of the region's last listing: the database's when the page was built, or this process's since.
    listed_at = max(page.listed_at, runtime.freshness.listed_at.get(region, 0.0))
    if runtime.freshness.unconfirmed(region, listed_at, now=time.time(), bound=runtime.settings.stale_bound_seconds):
        answer[1].append(UNCONFIRMED)
        runtime.metrics.stale_answers[STALE_UNCONFIRMED] += 1
    return answer


async def listing_of(runtime: Runtime, region: str) -> Listing:
    """When a reconcile pass (of any replica) first and last listed `region`; NotYetListed (503) if none has."""
    listing = (await runtime.cache.listings([region])).get(region)
    if listing is None:
        raise NotYetListed(
            f"The cache has not listed the images of region {region} yet (its first reconcile pass has not "
            "completed), so it has no list to give; retry later.",
            retry_after=NOT_YET_LISTED_RETRY_SECONDS,
        )
    return listing


def question(query: bytes, settings: Settings) -> tuple[PageKey, datetime | None]:
    """What a list request asks, checked: its page (region resolved, imageStatus, nextToken as given; None when
    empty) and the moment (`at`; None: now). BadRequest as pcluster's (other parameters are ignored, as
    pcluster ignores them).

    The one reading of a list request, for the route and for the fast path in front of it alike."""
    params = parse(query)
    image_status = params.get("imageStatus")
    if image_status is None:
        raise BadRequest("Bad Request: Missing query parameter 'imageStatus'")
    if image_status not in IMAGE_STATUS_FILTERS:
        raise BadRequest(f"Bad Request: {image_status!r} is not one of ['AVAILABLE', 'PENDING', 'FAILED']")
    region = region_from(params.get("region"), settings)
    at = params.get("at")
    return (region, image_status, params.get("nextToken") or None), parse_timestamp(at, name="at") if at else None


class ListImages:
    """The route: a plain ASGI endpoint, like describe's, answering from prepared pages."""

    def __init__(self, state: AppState, tokens: pages.PageTokens) -> None:
        self.state = state
        self.tokens = tokens
        self._pages: BoundedDict[PageKey, Page] = BoundedDict(PAGE_MAX_ENTRIES)
        self._entries = queries.ListEntries()
        self._at_compressor = Compressor()
        # Clients polling the same page when it expires share one query.
        self._building: SingleFlight[PageKey, Page] = SingleFlight()
        self._refreshing: set[asyncio.Task[Page]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.state.runtime
        key, at = question(scope["query_string"], runtime.settings)
        if at is not None:
            await self._answer_at(scope, receive, send, runtime, key=key, at=at)
            return
        page = self.remembered(runtime, key) or await self._building.run(key, lambda: self._build(runtime, key))
        await send_answer(send, page_answer(page, scope, runtime, key[0]))

    async def _answer_at(
        self, scope: Scope, receive: Receive, send: Send, runtime: Runtime, *, key: PageKey, at: datetime
    ) -> None:
        """A page of the list as it stood at `at`; its token is signed for this very question."""
        region, image_status, token = key
        listing = await listing_of(runtime, region)
        if at < listing.first_listed_at:
            # Not a fault of the server's, nor one that passes: that moment has no list, and never will.
            raise NotFound(
                f"The cache had not listed the images of region {region} by {iso_time(at)}: it first listed them "
                f"at {iso_time(listing.first_listed_at)}, so it has no list of that moment; ask for a later one."
            )
        query = pages.query(PATH, region=region, imageStatus=image_status, at=at.isoformat())
        after = await self.tokens.read(token, query=query, kind=str)
        page = await fleet.images_at(
            runtime.engine, region=region, image_status=image_status, at=at, after=after, limit=AT_PAGE_SIZE,
            query_seconds=runtime.settings.history_query_seconds,
        )
        runtime.metrics.history_queries["fleet_at"] += 1
        document: dict[str, Any] = {"images": page.images}
        if page.next_after is not None:
            document["nextToken"] = await self.tokens.issue(page.next_after, query=query)
        body = orjson.dumps(document)
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        oldest = horizon(runtime.settings)
        headers = {"Cache-Control": "no-cache", **horizon_headers(oldest, past=at < oldest)}
        response = self._at_compressor.answer(Request(scope, receive), body, etag=etag, headers=headers)
        await response(scope, receive, send)

    def remembered(self, runtime: Runtime, key: PageKey) -> Page | None:
        """The remembered page while it may still be served (younger than the read-cache bound, or nothing stored
        has changed since it was built); past half its life, a rebuild starts behind it."""
        page = self._pages.get(key)
        bound = runtime.settings.read_cache_seconds
        if page is None or page.generation != runtime.lookup.generation or bound <= 0:
            return None
        now = time.monotonic()
        age = now - page.built_at
        if age < bound / 2 or runtime.lookup.unchanged_since(page.built_at, now):
            return page
        if age >= bound:
            return None
        if key not in self._building:
            task = asyncio.create_task(self._building.run(key, lambda: self._build(runtime, key)))
            self._refreshing.add(task)
            task.add_done_callback(self._refreshed)
        return page

    def _refreshed(self, task: asyncio.Task[Page]) -> None:
        self._refreshing.discard(task)
        # A failed rebuild in the background is not an error of any request: the next one that needs the
        # page builds it and answers the error itself.
        if not task.cancelled():
            task.exception()

    async def _build(self, runtime: Runtime, key: PageKey) -> Page:
        region, image_status, token = key
        query = pages.query(PATH, region=region, imageStatus=image_status)
        after = await self.tokens.read(token, query=query, kind=str)
        # Taken before the query: a write that lands meanwhile makes the page stale at once.
        generation, started = runtime.lookup.generation, time.monotonic()
        listing = await listing_of(runtime, region)
        listed = await queries.list_images(
            runtime.engine, region=region, image_status=image_status, after=after, entries=self._entries
        )
        next_token = await self.tokens.issue(listed.next_after, query=query) if listed.next_after is not None else None
        page = prepare(
            page_body(listed, next_token), generation=generation, built_at=started,
            listed_at=listing.listed_at.timestamp(),
        )
        self._pages[key] = page
        return page


class FastList(FastPath):
    """In front of the router: a list request whose page is remembered is answered straight away. Anything
    else (a page to build, bad input, other routes) goes on to the router, which answers it in full, so no
    behaviour lives only here: both read the request with `question` and answer with `page_answer`.
    """

    def __init__(self, app: ASGIApp, route: ListImages) -> None:
        self.app = app
        self.route = route
        # What each list request asked (its query string) means, once read and found valid, without `at`: its page.
        # A question's meaning is the settings', which do not change under a running app.
        self._asked: BoundedDict[bytes, PageKey] = BoundedDict(ASKED_MAX_ENTRIES)

    def answer(self, scope: Scope) -> FastAnswer | None:
        """(status, headers, body) of a remembered page, or None when the router must answer. Like the describe
        fast path's, it is synchronous, so the outermost layer can ask it directly (service.api.app)."""
        runtime = self.route.state.opened
        if (
            runtime is None
            or scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "GET"
            or scope.get("root_path")
        ):
            return None
        query: bytes = scope["query_string"]
        key = self._asked.get(query)
        if key is None:
            try:
                key, at = question(query, runtime.settings)
            except BadRequest:
                return None  # the route answers it
            if at is not None:
                return None
            self._asked[query] = key
        page = self.route.remembered(runtime, key)
        if page is None:
            return None
        # For the instrumentation outside: which route answered (the router, which names it, never ran).
        scope[ROUTE_KEY] = PATH
        scope[CACHE_KEY] = CACHE_HIT
        return page_answer(page, scope, runtime, key[0])
