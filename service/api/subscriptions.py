"""GET /v3/subscriptions (each subscription's sink, cursor, lag, last error, dead letters, whether disabled) and
POST /v3/subscriptions/{name}/replay?since=<ISO time or change sequence> (send again from there)."""

from __future__ import annotations

from datetime import datetime

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api.requests import EVENT_ID, MAX_EVENT_ID, parse_timestamp
from service.api.state import AppState
from service.errors import BadRequest, NotFound

PATH = "/v3/subscriptions"
REPLAY_PATH = "/v3/subscriptions/{name}/replay"
JSON = "application/json"


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type=JSON, headers={"Cache-Control": "no-store"})


def since_of(raw: str | None) -> tuple[int | None, datetime | None]:
    """`since`: a change sequence (digits) or an ISO 8601 moment."""
    if not raw:
        raise BadRequest("Bad Request: since is required: a change sequence number or an ISO 8601 timestamp")
    if EVENT_ID.fullmatch(raw):
        if int(raw) > MAX_EVENT_ID:
            raise BadRequest(f"Bad Request: since must be a change sequence number up to {MAX_EVENT_ID}; got {raw!r}")
        return int(raw), None
    return None, parse_timestamp(raw, name="since")


class Subscriptions:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def endpoint(self, request: Request) -> Response:
        notifier = self.state.runtime.notifier
        found = await notifier.health() if notifier is not None else []
        return _json({"subscriptions": found})

    async def replay(self, request: Request) -> Response:
        name = request.path_params["name"]
        since_seq, since_time = since_of(request.query_params.get("since"))
        notifier = self.state.runtime.notifier
        cursor = None
        if notifier is not None:
            cursor = await notifier.replay(name, since_seq=since_seq, since_time=since_time)
        if cursor is None:
            raise NotFound(f"no subscription named {name!r} in the subscriptions file")
        return _json({"name": name, "cursor": cursor}, status=202)
