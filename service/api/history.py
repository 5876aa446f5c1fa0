"""GET /v3/images/custom/{imageId}/history: one image's status transitions, oldest first, paginated."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api.compression import Compressor
from service.api.requests import optional_timestamp, parse_limit, region_from, validate_image_id
from service.api.state import AppState
from service.errors import NotFound
from service.ingest.lookup import not_found_message
from service.store import queries

PATH = "/v3/images/custom/{image_id}/history"


class ImageHistory:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._compressor = Compressor()

    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_id = request.path_params["image_id"]
        validate_image_id(image_id)
        params = dict(request.query_params)
        region = region_from(params.get("region"), runtime.settings)
        page = await queries.history(
            runtime.engine,
            region=region,
            image_id=image_id,
            since=optional_timestamp(params, "since"),
            until=optional_timestamp(params, "until"),
            limit=parse_limit(params.get("limit"), default=100, maximum=1000),
            next_token=params.get("nextToken"),
        )
        if not page.known:
            raise NotFound(not_found_message(image_id))
        body: dict[str, Any] = {"imageId": image_id, "region": region, "transitions": page.transitions}
        if page.next_token:
            body["nextToken"] = page.next_token
        return self._compressor.answer(request, orjson.dumps(body))
