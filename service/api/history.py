"""GET /v3/images/custom/{imageId}/history: one image's status transitions, oldest first, paginated."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api import pages
from service.api.history_routes import HistoryRoute
from service.api.query import Query, parse_limit
from service.api.requests import validate_image_id
from service.errors import NotFound
from service.ingest.lookup import not_found_message
from service.store import queries

PATH = "/v3/images/custom/{image_id}/history"
PARAMETERS = ("region", "since", "until", "limit", "nextToken")
MAX_LIMIT = 1000


class ImageHistory(HistoryRoute):
    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_id = request.path_params["image_id"]
        validate_image_id(image_id)
        params = Query(request.scope["query_string"]).only(PARAMETERS)
        region = params.region(runtime.settings)
        # Both ends included: this route's window is older than the half-open one of the fleet's routes.
        since, until = params.timestamp("since"), params.timestamp("until")
        # An empty limit= is refused here, as it always was (the fleet's routes read it as not given).
        limit = parse_limit(params.get("limit"), default=100, maximum=MAX_LIMIT)
        # A page continues one query: this image, region and time window (the page size may change).
        query = pages.query(
            PATH, image_id=image_id, region=region, since=since and since.isoformat(), until=until and until.isoformat()
        )
        after = await self.tokens.read(params.get("nextToken"), query=query, kind=int)
        page = await queries.history(
            runtime.engine, region=region, image_id=image_id, since=since, until=until, limit=limit, after=after
        )
        if not page.known:
            raise NotFound(not_found_message(image_id))
        body: dict[str, Any] = {"imageId": image_id, "region": region, "transitions": page.transitions}
        if page.next_after is not None:
            body["nextToken"] = await self.tokens.issue(page.next_after, query=query)
        return self.compressor.answer(request, orjson.dumps(body))
