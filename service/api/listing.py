"""GET /v3/images/custom?imageStatus=: pcluster's ListImages from the cache, pages remembered like records."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api import pages
from service.api.compression import Compressor
from service.api.describe import PREPARED_MAX_ENTRIES
from service.api.requests import region_from
from service.api.state import AppState
from service.domain.listing import IMAGE_STATUS_FILTERS
from service.errors import BadRequest
from service.runtime import Runtime
from service.store import queries
from service.support.bounded import BoundedDict
from service.support.singleflight import SingleFlight

PATH = "/v3/images/custom"

PageKey = tuple[str, str, str | None]


class ListImages:
    """A page is remembered like a record: dropped by any local write, kept at most read_cache_seconds."""

    def __init__(self, state: AppState, tokens: pages.PageTokens) -> None:
        self.state = state
        self.tokens = tokens
        self._pages: BoundedDict[PageKey, tuple[int, float, bytes, str]] = BoundedDict(PREPARED_MAX_ENTRIES)
        # Clients polling the same page when it expires share one query.
        self._building: SingleFlight[PageKey, tuple[bytes, str]] = SingleFlight()
        # Pages are compressed once per ETag (a page's content), not once per request.
        self._compressor = Compressor()

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_status = request.query_params.get("imageStatus")
        if image_status is None:
            raise BadRequest("Bad Request: Missing query parameter 'imageStatus'")
        if image_status not in IMAGE_STATUS_FILTERS:
            raise BadRequest(f"Bad Request: {image_status!r} is not one of ['AVAILABLE', 'PENDING', 'FAILED']")
        region = region_from(request.query_params.get("region"), runtime.settings)
        query = pages.query(PATH, region=region, imageStatus=image_status)
        after = await self.tokens.read(request.query_params.get("nextToken"), query=query, kind=str)
        body, etag = await self._page(runtime, (region, image_status, after))
        return self._compressor.answer(request, body, etag=etag, headers={"Cache-Control": "no-cache"})

    async def _page(self, runtime: Runtime, key: PageKey) -> tuple[bytes, str]:
        remembered = self._pages.get(key)
        generation = runtime.lookup.generation
        if (
            remembered is not None
            and remembered[0] == generation
            and time.monotonic() - remembered[1] < runtime.settings.read_cache_seconds
        ):
            return remembered[2], remembered[3]
        body, etag = await self._building.run(key, lambda: self._build_page(runtime, key))
        self._pages[key] = (generation, time.monotonic(), body, etag)
        return body, etag

    async def _build_page(self, runtime: Runtime, key: PageKey) -> tuple[bytes, str]:
        region, image_status, after = key
        page = await queries.list_images(runtime.engine, region=region, image_status=image_status, after=after)
        document: dict[str, Any] = {"images": page.images}
        if page.next_after is not None:
            query = pages.query(PATH, region=region, imageStatus=image_status)
            document["nextToken"] = await self.tokens.issue(page.next_after, query=query)
        return orjson.dumps(document), page.etag
