"""Liveness, readiness (503 from the moment shutdown begins) and the counters."""

from __future__ import annotations

from typing import Any

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
        """200 when this process can serve what it has (database reachable, schema current), else 503.

        The body also says how AWS and reconciliation look from here, which never make it not ready.
        """
        runtime = self.state.runtime
        checks = await runtime.readiness()
        ready = all(checks.values())
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if not runtime.draining.is_set():
            body.update(runtime.upstream())
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON)

    async def stats(self, request: Request) -> Response:
        return Response(orjson.dumps(self.state.runtime.stats()), media_type=JSON)
