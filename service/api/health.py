"""Liveness, readiness (503 from the moment shutdown begins) and the counters."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api.errors import JSON
from service.api.state import AppState


class Health:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def healthz(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON)

    async def readyz(self, request: Request) -> Response:
        checks = await self.state.runtime.readiness()
        ready = all(checks.values())
        return Response(
            orjson.dumps({"ready": ready, "checks": checks}), status_code=200 if ready else 503, media_type=JSON
        )

    async def stats(self, request: Request) -> Response:
        return Response(orjson.dumps(self.state.runtime.stats()), media_type=JSON)
