"""GET /v3/image-builds and /v3/image-builds/summary: builds as units, and the numbers of a weekly report.

A build belongs to the window it started in ([since, until)), so consecutive windows count each build
once. Builds that started before the retention horizon are not kept (their start is no longer known):
both routes answer from the horizon on, and say so when asked about earlier.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service.api import pages
from service.api.history_routes import HistoryRoute, horizon, horizon_fields, horizon_headers
from service.api.query import ORDERS, Query
from service.domain.builds import COMPLETE, FAILED, IN_PROGRESS, OUTCOMES
from service.domain.describe import iso_time
from service.errors import BadToken
from service.store import builds, evidence
from service.support.clock import as_utc

PATH = "/v3/image-builds"
SUMMARY_PATH = "/v3/image-builds/summary"
PARAMETERS = ("region", "since", "until", "version", "outcome", "imageId", "order", "limit", "nextToken")
SUMMARY_PARAMETERS = ("region", "since", "until", "groupBy")
GROUP_BY = tuple(builds.GROUPS)
PAGE_DEFAULT, PAGE_MAX = 100, 1000


def _edge(item: dict[str, Any], name: str, *, at: datetime, exact: bool, after: datetime | None, slack: float) -> None:
    item[f"{name}Time"] = iso_time(at)
    item[f"{name}Exact"] = bool(exact)
    if not exact:
        # Seen by reconciliation (or a live look-up): it happened after the observation before, and within one
        # reconcile interval of this one while the service was reconciling.
        earliest = at - timedelta(seconds=slack)
        item[f"{name}NotBefore"] = iso_time(max(after, earliest) if after is not None else earliest)


def build_json(row: Any, *, reconcile_seconds: float) -> dict[str, Any]:
    item: dict[str, Any] = {"imageId": row.image_id, "region": row.region}
    if row.pcluster_version is not None:
        item["version"] = row.pcluster_version
    item["outcome"] = row.outcome
    _edge(item, "start", at=row.start_time, exact=row.start_exact, after=row.start_after, slack=reconcile_seconds)
    if row.end_time is not None:
        _edge(item, "end", at=row.end_time, exact=row.end_exact, after=row.end_after, slack=reconcile_seconds)
        item["durationSeconds"] = round(row.duration_seconds, 3)
    if row.stack_status_reason is not None:
        item["cloudformationStackStatusReason"] = row.stack_status_reason
    if row.imagebuilder_status_reason is not None:
        item["imagebuilderImageStatusReason"] = row.imagebuilder_status_reason
    # Stored as the JSON object it is served as.
    item["phases"] = orjson.Fragment(row.phases)
    return item


def _window(params: Query, oldest: datetime) -> tuple[datetime, datetime | None, bool]:
    """The window asked for, from the horizon at the earliest, and whether the question reached before it."""
    since, until = params.window()
    past = since is not None and since < oldest
    return (max(since, oldest) if since is not None else oldest), until, past


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


class Builds(HistoryRoute):
    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        settings = runtime.settings
        params = Query(request.scope["query_string"]).only(PARAMETERS)
        oldest = horizon(settings)
        asked_since = params.timestamp("since")
        since, until, past = _window(params, oldest)
        where = builds.BuildFilter(
            region=params.region(settings),
            since=since,
            until=until,
            version=params.version(),
            outcome=params.choice("outcome", OUTCOMES),
            image_id=params.image_id(),
        )
        descending = params.choice("order", ORDERS, default="asc") == "desc"
        limit = params.limit(default=PAGE_DEFAULT, maximum=PAGE_MAX)
        query = pages.query(
            PATH, region=where.region, since=_time(asked_since), until=_time(until), version=where.version,
            outcome=where.outcome, imageId=where.image_id, order="desc" if descending else "asc",
        )
        cursor = await self.tokens.read(params.text("nextToken"), query=query, kind=str)
        after = _cursor(cursor) if cursor is not None else None
        page = await builds.page(
            runtime.engine, where=where, descending=descending, after=after, limit=limit,
            query_seconds=settings.history_query_seconds,
        )
        runtime.metrics.history_queries["builds"] += 1
        shown = {row.image_id for row in page.rows}
        kept = await evidence.kept_builds(runtime.engine, region=where.region, image_ids=shown)
        body: dict[str, Any] = {
            "region": where.region,
            "builds": [
                build_json(row, reconcile_seconds=settings.resync_seconds)
                # Whether this build's stack events and logs were kept when it ended (GetImageStackEvents, ...).
                | {"evidenceKept": kept.get(row.image_id) == row.start_time}
                for row in page.rows
            ],
            **horizon_fields(oldest, past=past),
        }
        if page.next_key is not None:
            start, image_id, number = page.next_key
            body["nextToken"] = await self.tokens.issue(f"{start.isoformat()} {number} {image_id}", query=query)
        return self.compressor.answer(request, orjson.dumps(body), headers=horizon_headers(oldest, past=past))

    async def summary(self, request: Request) -> Response:
        runtime = self.state.runtime
        settings = runtime.settings
        params = Query(request.scope["query_string"]).only(SUMMARY_PARAMETERS)
        oldest = horizon(settings)
        since, until, past = _window(params, oldest)
        group_by = params.choice("groupBy", GROUP_BY, default="version")
        assert group_by is not None
        where = builds.BuildFilter(region=params.region(settings), since=since, until=until)
        result = await builds.summary(
            runtime.engine, where=where, group_by=group_by, query_seconds=settings.history_query_seconds
        )
        runtime.metrics.history_queries["builds_summary"] += 1
        body: dict[str, Any] = {"region": where.region, "since": iso_time(since)}
        if until is not None:
            body["until"] = iso_time(until)
        body |= {
            "groupBy": group_by,
            "groups": [group_json(group) for group in result.groups],
            "failureReasons": [
                {"reason": reason.key, "count": reason.count, "example": reason.example} for reason in result.reasons
            ],
            **horizon_fields(oldest, past=past),
        }
        return self.compressor.answer(request, orjson.dumps(body), headers=horizon_headers(oldest, past=past))


def group_json(group: builds.Group) -> dict[str, Any]:
    complete, failed = group.by_outcome[COMPLETE], group.by_outcome[FAILED]
    item: dict[str, Any] = {
        "key": group.key,
        "builds": group.builds,
        **{("inProgress" if outcome == IN_PROGRESS else outcome): group.by_outcome[outcome] for outcome in OUTCOMES},
        # Of the builds that finished by succeeding or failing (a deleted build was stopped, not failed).
        "successRate": round(complete / (complete + failed), 4) if complete + failed else None,
    }
    if group.longest is not None:
        item["durationSeconds"] = {
            **{f"p{p}": round(seconds, 3) for p, seconds in sorted(group.percentiles.items())},
            "max": round(group.longest, 3),
        }
    return item


def _cursor(cursor: str) -> builds.BuildKey:
    try:
        start, number, image_id = cursor.split(" ")
        return as_utc(start), image_id, int(number)
    except ValueError as exc:
        raise BadToken() from exc
