"""GET /v3/image-transitions: every image's status changes in a window, as JSON pages or streamed exports.

JSON (the default) is paged by a signed token over (time, id); `Accept: application/x-ndjson` or
`text/csv` streams every matching row instead, in batches, so an export of any size holds one batch
in memory. Either way the rows are those that existed when the first page (or the export) began.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service.api import pages
from service.api.errors import JSON
from service.api.history_routes import HistoryRoute, horizon, horizon_fields, horizon_headers
from service.api.query import ORDERS, Query
from service.api.requests import negotiate
from service.domain.models import Source
from service.domain.status import BUILD_STATUS_BY_STACK_STATUS
from service.errors import BadRequest, BadToken
from service.runtime import Runtime
from service.store import fleet
from service.store.queries import transition_json
from service.support.clock import as_utc

log = logging.getLogger(__name__)

PATH = "/v3/image-transitions"
PARAMETERS = ("region", "since", "until", "imageBuildStatus", "imageId", "source", "order", "limit", "nextToken")
BUILD_STATUSES = tuple(dict.fromkeys(BUILD_STATUS_BY_STACK_STATUS.values()))
SOURCES = tuple(source.value for source in Source)
PAGE_DEFAULT, PAGE_MAX = 100, 1000
NDJSON = "application/x-ndjson"
CSV = "text/csv"
EXPORT_BATCH = 1000
CSV_COLUMNS = (
    "imageId", "region", "time", "observedTime", "source", "imageBuildStatus", "cloudformationStackStatus",
    "cloudformationStackStatusReason", "imagebuilderImageStatus", "imagebuilderImageStatusReason", "ec2AmiState",
    "gone",
)


def item(row: Any) -> dict[str, Any]:
    """One transition of the fleet: the per-image history's fields, with the image it belongs to."""
    return {"imageId": row.image_id, "region": row.region, **transition_json(row)}


class FleetTransitions(HistoryRoute):
    async def endpoint(self, request: Request) -> Response:
        runtime = self.state.runtime
        settings = runtime.settings
        params = Query(request.scope["query_string"]).only(PARAMETERS)
        since, until = params.window()
        where = fleet.TransitionFilter(
            region=params.region(settings),
            since=since,
            until=until,
            build_status=params.choice("imageBuildStatus", BUILD_STATUSES),
            image_id=params.image_id(),
            source=params.choice("source", SOURCES),
        )
        descending = params.choice("order", ORDERS, default="asc") == "desc"
        oldest = horizon(settings)
        past = since is not None and since < oldest
        headers = horizon_headers(oldest, past=past)
        media = negotiate(request.headers.get("accept"), (JSON, NDJSON, CSV))
        bound = settings.history_query_seconds
        if media != JSON:
            for name in ("limit", "nextToken"):
                if params.given(name):
                    raise BadRequest(
                        f"Bad Request: {name} pages JSON answers; an export ({media}) streams every matching row"
                    )
            upto = await fleet.latest_id(runtime.engine, query_seconds=bound)
            runtime.metrics.history_queries["transitions_export"] += 1
            render = Render() if media == NDJSON else CsvRender()
            return StreamingResponse(
                _export(runtime, where=where, descending=descending, upto=upto, render=render),
                media_type=media,
                headers={**headers, "Cache-Control": "no-store"},
            )
        limit = params.limit(default=PAGE_DEFAULT, maximum=PAGE_MAX)
        query = pages.query(
            PATH, region=where.region, since=_time(since), until=_time(until), imageBuildStatus=where.build_status,
            imageId=where.image_id, source=where.source, order="desc" if descending else "asc",
        )
        cursor = await self.tokens.read(params.text("nextToken"), query=query, kind=str)
        after: fleet.TransitionKey | None = None
        if cursor is not None:
            after, upto = _cursor(cursor)
        else:
            upto = await fleet.latest_id(runtime.engine, query_seconds=bound)
        page = await fleet.transitions_page(
            runtime.engine, where=where, descending=descending, after=after, upto=upto, limit=limit, query_seconds=bound
        )
        runtime.metrics.history_queries["transitions"] += 1
        body: dict[str, Any] = {
            "region": where.region,
            "transitions": [item(row) for row in page.rows],
            **horizon_fields(oldest, past=past),
        }
        if page.next_key is not None:
            moment, row_id = page.next_key
            # Where the next page starts, and the newest row of this paging session.
            body["nextToken"] = await self.tokens.issue(f"{moment.isoformat()} {row_id} {upto}", query=query)
        return self.compressor.answer(request, orjson.dumps(body), headers=headers)


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _cursor(cursor: str) -> tuple[fleet.TransitionKey, int]:
    try:
        moment, row_id, upto = cursor.split(" ")
        return (as_utc(moment), int(row_id)), int(upto)
    except ValueError as exc:
        raise BadToken() from exc


class Render:
    """Rows to bytes in one export format; `opening` is what the stream starts with even when no row matches."""

    opening = b""

    def rows(self, rows: list[Any]) -> bytes:
        return b"".join(orjson.dumps(item(row)) + b"\n" for row in rows)


class CsvRender(Render):
    """CSV with its header first; absent values are empty cells."""

    opening = (",".join(CSV_COLUMNS) + "\r\n").encode()

    def rows(self, rows: list[Any]) -> bytes:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\r\n")
        for row in rows:
            values = item(row)
            writer.writerow(["true" if values.get(c) is True else values.get(c, "") for c in CSV_COLUMNS])
        return text.getvalue().encode()


async def _export(
    runtime: Runtime, *, where: fleet.TransitionFilter, descending: bool, upto: int, render: Render
) -> AsyncIterator[bytes]:
    sent = 0
    if render.opening:
        yield render.opening
    try:
        async for rows in fleet.export(
            runtime.engine, where=where, descending=descending, upto=upto, batch=EXPORT_BATCH,
            query_seconds=runtime.settings.history_query_seconds,
        ):
            sent += len(rows)
            runtime.metrics.history_rows_exported += len(rows)
            yield render.rows(rows)
    except Exception:
        # The status line is gone: the only way left to say "incomplete" is to end the stream abnormally.
        log.exception("transition export of %s ended after %d rows", where.region, sent)
        raise
    log.info("exported %d transitions of %s", sent, where.region)
