"""GET /v3/images/custom?imageStatus=: pcluster's ListImages from the cache, pages remembered like records.

With `at=T` it answers as it would have at T (same shape, same pagination), from the transitions: the
fleet as the cache knew it then, consistent with describe `at=T` (service.store.fleet).
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api import pages
from service.api.describe import PREPARED_MAX_ENTRIES
from service.api.errors import JSON
from service.api.history_params import horizon, horizon_headers
from service.api.requests import etag_matches, parse_timestamp, region_from
from service.api.state import AppState
from service.domain.listing import IMAGE_STATUS_FILTERS
from service.errors import BadRequest
from service.runtime import Runtime
from service.store import fleet, queries
from service.support.bounded import BoundedDict
from service.support.singleflight import SingleFlight

PATH = "/v3/images/custom"

PageKey = tuple[str, str, str | None]
PAGE_SIZE = 100


class ListImages:
    """A page is remembered like a record: dropped by any local write, kept at most read_cache_seconds."""

    def __init__(self, state: AppState, tokens: pages.PageTokens) -> None:
        self.state = state
        self.tokens = tokens
        self._pages: BoundedDict[PageKey, tuple[int, float, bytes, str]] = BoundedDict(PREPARED_MAX_ENTRIES)
        # Clients polling the same page when it expires share one query.
        self._building: SingleFlight[PageKey, tuple[bytes, str]] = SingleFlight()

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_status = request.query_params.get("imageStatus")
        if image_status is None:
            raise BadRequest("Bad Request: Missing query parameter 'imageStatus'")
        if image_status not in IMAGE_STATUS_FILTERS:
            raise BadRequest(f"Bad Request: {image_status!r} is not one of ['AVAILABLE', 'PENDING', 'FAILED']")
        region = region_from(request.query_params.get("region"), runtime.settings)
        token = request.query_params.get("nextToken")
        at = request.query_params.get("at")
        extra: dict[str, str] = {}
        if at:
            moment = parse_timestamp(at, name="at")
            body, etag = await self._page_at(runtime, region=region, image_status=image_status, at=moment, token=token)
            oldest = horizon(runtime.settings)
            extra = horizon_headers(oldest, past=moment < oldest)
        else:
            body, etag = await self._page(runtime, (region, image_status, token))
        headers = {"ETag": etag, "Cache-Control": "no-cache", **extra}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=JSON, headers=headers)

    async def _page(self, runtime: Runtime, key: PageKey) -> tuple[bytes, str]:
        remembered = self._pages.get(key)
        generation = runtime.lookup.generation
        if (
            remembered is not None
            and remembered[0] == generation
            and time.monotonic() - remembered[1] < runtime.settings.read_cache_seconds
        ):
            return remembered[2], remembered[3]
        body, etag = await self._building.run(key, lambda: _build_page(runtime, key))
        self._pages[key] = (generation, time.monotonic(), body, etag)
        return body, etag


    async def _page_at(
        self, runtime: Runtime, *, region: str, image_status: str, at: datetime, token: str | None
    ) -> tuple[bytes, str]:
        """A page of the list as it stood at `at`; its token is signed for this very question."""
        query = pages.query(PATH, region=region, imageStatus=image_status, at=at.isoformat())
        after = await self.tokens.read(token, query=query, kind=str)
        page = await fleet.images_at(
            runtime.engine, region=region, image_status=image_status, at=at, after=after, limit=PAGE_SIZE,
            query_seconds=runtime.settings.history_query_seconds,
        )
        runtime.metrics.history_queries["fleet_at"] += 1
        document: dict[str, Any] = {"images": page.images}
        if page.next_after is not None:
            document["nextToken"] = await self.tokens.issue(page.next_after, query=query)
        body = orjson.dumps(document)
        return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


async def _build_page(runtime: Runtime, key: PageKey) -> tuple[bytes, str]:
    region, image_status, token = key
    page = await queries.list_images(runtime.engine, region=region, image_status=image_status, next_token=token)
    document: dict[str, Any] = {"images": page.images}
    if page.next_token:
        document["nextToken"] = page.next_token
    return orjson.dumps(document), page.etag

