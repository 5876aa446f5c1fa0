"""Liveness, readiness (503 from the moment shutdown begins) and the counters."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from service.api.errors import JSON
from service.api.state import AppState
from service.runtime import Runtime
from service.store import db

log = logging.getLogger(__name__)


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
        checks = await readiness(runtime)
        ready = all(checks.values())
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if not runtime.draining.is_set():
            body.update(upstream(runtime))
        return Response(orjson.dumps(body), status_code=200 if ready else 503, media_type=JSON)

    async def stats(self, request: Request) -> Response:
        return Response(orjson.dumps(stats(self.state.runtime)), media_type=JSON)


def stats(runtime: Runtime) -> dict[str, Any]:
    """/stats: what the metrics say, in the shape clients already read."""
    metrics = runtime.metrics
    return {
        "live_lookups": metrics.live_lookups(),
        "reconcile": {region: dict(report) for region, report in metrics.reconcile_reports.items()},
        "reconcile_passes": metrics.reconcile_passes,
        "reconcile_lease": sorted(metrics.reconcile_lease),
        "events": dict(metrics.events),
        "targeted_refreshes": metrics.targeted_refreshes,
    }


async def readiness(runtime: Runtime) -> dict[str, bool]:
    """What "ready" means: this process can serve what it has — the database answers and its schema is
    current. AWS is not a condition (a cache is most needed when AWS is down): see `upstream`."""
    if runtime.draining.is_set():
        return {"accepting_requests": False}
    checks = {"database": False, "schema": False}
    try:
        async with runtime.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        checks["database"] = True
        checks["schema"] = await db.schema_is_current(runtime.engine)
    except Exception as exc:  # readiness reports, it does not raise
        unavailable = db.unavailable(exc)
        if unavailable is not None:
            # Logged once per outage by the tracker, not once per load balancer probe.
            runtime.outage.noticed(unavailable)
        else:
            log.warning("readiness check failed: %s", exc)
    return checks


def upstream(runtime: Runtime) -> dict[str, Any]:
    """AWS and reconciliation as this process sees them, for /readyz's body (never a readiness condition)."""
    freshness = runtime.freshness

    def times(by_region: dict[str, float]) -> dict[str, str | None]:
        return {region: _iso(since) for region, since in sorted(by_region.items())}

    return {
        "aws": {
            region: {
                "reachable": freshness.aws_reachable(region),
                "lastAnswer": _iso(freshness.aws_last_answer.get(region)),
                "lastFailure": _iso(freshness.aws_last_failure.get(region)),
                **({"lastError": freshness.aws_last_error[region]} if not freshness.aws_reachable(region) else {}),
            }
            for region in runtime.settings.regions
        },
        "reconcile": {
            "polling": runtime.polling,
            "firstPassDone": runtime.reconciler.first_pass_done.is_set(),
            "behindSince": times(freshness.reconcile_behind_since),
        },
        "events": {"behindSince": times(freshness.events_behind_since)},
        "rechecksOwed": freshness.rechecks_owed,
        "databaseOutage": freshness.database_down,
    }


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
