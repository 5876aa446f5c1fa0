"""ParallelCluster's image log operations: GetImageStackEvents, ListImageLogStreams, GetImageLogEvents.

Live, as pcluster answers them, while the stack or the log group exists (`X-Cache: MISS`); from the evidence
kept when the build ended once they are gone (`X-Cache: ARCHIVE`, where pcluster answers 404); pcluster's 404
when neither. Kept pages carry this service's own signed tokens; live pages carry AWS's, passed through.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service import aws as aws_calls
from service.api import pages
from service.api.describe import caller_of
from service.api.errors import NOT_FOUND_ROUTE
from service.api.requests import region_from, validate_image_id
from service.api.state import AppState
from service.domain import evidence as domain
from service.errors import AwsError, AwsNotFound, BadRequest, NotFound, RequestError
from service.store import evidence as store
from service.support.clock import as_utc

STACK_EVENTS_PATH = "/v3/images/custom/{image_id}/stackevents"
LOG_STREAMS_PATH = "/v3/images/custom/{image_id}/logstreams"
# The stream name is the whole remaining path: Image Builder names streams like `3.2.1/1`, which pcluster's
# client sends percent-encoded (`3.2.1%2F1`) and the server sees decoded.
LOG_EVENTS_PATH = "/v3/images/custom/{image_id}/logstreams/{log_stream_name:path}"

# CloudWatch's bound on a log stream's name.
MAX_STREAM_NAME = 512
LIVE = "MISS"
ARCHIVE = "ARCHIVE"
TRUNCATED_HEADER = "X-Evidence-Truncated"
TIMESTAMP_MESSAGE = (
    "{name} filter must be in the ISO 8601 format: YYYY-MM-DDThh:mm:ssZ. (e.g. 1984-09-15T19:20:30Z or 1984-09-15)."
)
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class InternalServiceError(RequestError):
    """pcluster's InternalServiceException: an AWS answer its code does not expect, passed on as a 500."""

    status_code = 500


def stack_missing(image_id: str) -> str:
    return f"CloudFormation Stack for Image {image_id} does not exist."


def logs_missing(image_id: str) -> str:
    return f"Unable to find image logs, please double check if image id={image_id} is correct."


def stream_missing(name: str) -> str:
    return f"The specified log stream {name} does not exist."


def parse_time(raw: str, *, name: str) -> datetime:
    """pcluster's validate_timestamp (dateutil's parser, UTC when no offset): ISO 8601, a date alone too."""
    text = raw.strip()
    try:
        moment = as_utc(text + "T00:00:00" if _DATE_ONLY.fullmatch(text) else text.replace("Z", "+00:00"))
    except (ValueError, OverflowError) as exc:
        raise BadRequest(f"Bad Request: {TIMESTAMP_MESSAGE.format(name=name)}") from exc
    return moment


def parse_limit(raw: str | None) -> int | None:
    """The `limit` query parameter as pcluster reads it: an int32; negative refused; 0 is "no limit" (pcluster
    passes a falsy limit on to CloudWatch as none)."""
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw) or not -(2**31) <= int(raw) < 2**31:
        raise BadRequest(f"Bad Request: Wrong type, expected 'integer' for query parameter 'limit'; got {raw!r}")
    value = int(raw)
    if value < 0:
        raise BadRequest("Bad Request: 'limit' must be a positive integer.")
    return value


def parse_bool(raw: str | None, *, name: str) -> bool | None:
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise BadRequest(f"Bad Request: Wrong type, expected 'boolean' for query parameter '{name}'; got {raw!r}")


def answer(body: dict[str, Any], *, source: str, cut: bool = False) -> Response:
    headers = {"X-Cache": source}
    if cut:
        headers[TRUNCATED_HEADER] = "true"
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


class ImageLogs:
    def __init__(self, state: AppState, tokens: pages.PageTokens) -> None:
        self.state = state
        self.tokens = tokens

    def _charge(self, request: Request, region: str) -> None:
        # A live read is AWS calls on a client's behalf: the live lookups' budget, per region and per caller.
        self.state.runtime.lookup.charge(region=region, caller=caller_of(request.scope))

    def _asked(self, request: Request) -> tuple[str, str, str | None]:
        """A paged operation's image (its id checked), region and nextToken; the live read charged to the caller."""
        image_id = request.path_params["image_id"]
        validate_image_id(image_id)
        params = dict(request.query_params)
        region = region_from(params.get("region"), self.state.runtime.settings)
        self._charge(request, region)
        return image_id, region, params.get("nextToken") or None

    async def stack_events(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_id, region, token = self._asked(request)
        try:
            page = await aws_calls.stack_events(runtime.aws, region=region, stack_name=image_id, next_token=token)
        except AwsNotFound:
            pass
        except AwsError as exc:
            raise _as_pcluster(exc) from exc
        else:
            body: dict[str, Any] = {}
            if page.get("NextToken"):
                body["nextToken"] = page["NextToken"]
            body["events"] = [domain.stack_event_document(event) for event in page["StackEvents"]]
            return answer(body, source=LIVE)
        kept = await store.read(runtime.engine, region=region, image_id=image_id)
        if kept is None or kept.stack_events is None:
            raise NotFound(stack_missing(image_id))
        events, following = await self._kept_page(
            kept.stack_events, path=STACK_EVENTS_PATH, image_id=image_id, region=region, token=token,
            size=domain.STACK_EVENTS_PAGE,
        )  # fmt: skip
        body = {"nextToken": following} if following is not None else {}
        body["events"] = events
        return answer(body, source=ARCHIVE)

    async def log_streams(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_id, region, token = self._asked(request)
        try:
            page = await aws_calls.log_streams(
                runtime.aws, region=region, group=domain.log_group_name(image_id), next_token=token
            )
        except AwsNotFound:
            pass
        except AwsError as exc:
            raise _as_pcluster(exc, unexpected="Unexpected error when retrieving image's logs: ") from exc
        else:
            body: dict[str, Any] = {"logStreams": [domain.log_stream_document(s) for s in page["logStreams"]]}
            if page.get("nextToken"):
                body["nextToken"] = page["nextToken"]
            return answer(body, source=LIVE)
        kept = await store.read(runtime.engine, region=region, image_id=image_id)
        if kept is None or kept.log_streams is None:
            raise NotFound(logs_missing(image_id))
        streams, following = await self._kept_page(
            kept.log_streams, path=LOG_STREAMS_PATH, image_id=image_id, region=region, token=token,
            size=domain.LOG_STREAMS_PAGE,
        )  # fmt: skip
        body = {"logStreams": streams}
        if following is not None:
            body["nextToken"] = following
        return answer(body, source=ARCHIVE, cut=kept.cut)

    async def _kept_page(
        self, kept: list[dict[str, Any]], *, path: str, image_id: str, region: str, token: str | None, size: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of kept evidence, and the token of the next page (our own, signed for this query) if any."""
        query = pages.query(path, image_id=image_id, region=region)
        start = await self.tokens.read(token, query=query, kind=int) or 0
        items, following = domain.page_of(kept, start=start, size=size)
        return items, (await self.tokens.issue(following, query=query) if following is not None else None)

    async def log_events(self, request: Request) -> Response:
        runtime = self.state.runtime
        image_id = request.path_params["image_id"]
        validate_image_id(image_id)
        stream = request.path_params["log_stream_name"]
        if not stream:
            # pcluster's router has no route for an empty name.
            raise NotFound(NOT_FOUND_ROUTE)
        if len(stream) > MAX_STREAM_NAME:
            raise BadRequest(f"Bad Request: logStreamName must be at most {MAX_STREAM_NAME} characters long")
        params = dict(request.query_params)
        region = region_from(params.get("region"), runtime.settings)
        start = parse_time(params["startTime"], name="start_time") if params.get("startTime") else None
        end = parse_time(params["endTime"], name="end_time") if params.get("endTime") else None
        if start is not None and end is not None and start >= end:
            raise BadRequest("Bad Request: start_time filter must be earlier than end_time filter.")
        limit = parse_limit(params.get("limit"))
        from_head = parse_bool(params.get("startFromHead"), name="startFromHead")
        token = params.get("nextToken") or None
        start_ms = int(start.timestamp() * 1000) if start else None
        end_ms = int(end.timestamp() * 1000) if end else None
        for name, ms in (("start_time", start_ms), ("end_time", end_ms)):
            # CloudWatch takes no time before the epoch; botocore would refuse it before asking.
            if ms is not None and ms < 0:
                raise BadRequest(f"Bad Request: {name} filter must not be before 1970-01-01T00:00:00Z.")
        self._charge(request, region)
        try:
            raw = await aws_calls.log_events(
                runtime.aws, region=region, group=domain.log_group_name(image_id), stream=stream,
                start_time_ms=start_ms, end_time_ms=end_ms, limit=limit, start_from_head=from_head, next_token=token,
            )  # fmt: skip
        except AwsNotFound as exc:
            if exc.message.startswith("The specified log stream"):
                raise NotFound(stream_missing(stream)) from exc
        except AwsError as exc:
            raise _as_pcluster(exc, unexpected="Unexpected error when retrieving log events: ") from exc
        else:
            body: dict[str, Any] = {}
            for key, name in (("nextForwardToken", "nextToken"), ("nextBackwardToken", "prevToken")):
                if raw.get(key):
                    body[name] = raw[key]
            body["events"] = [domain.log_event_document(event) for event in raw.get("events") or ()]
            return answer(body, source=LIVE)
        kept = await store.read(runtime.engine, region=region, image_id=image_id)
        if kept is None or kept.log_streams is None:
            raise NotFound(logs_missing(image_id))
        events = await store.read_log(runtime.engine, region=region, image_id=image_id, stream=stream)
        if events is None:
            raise NotFound(stream_missing(stream))
        query = pages.query(
            LOG_EVENTS_PATH, image_id=image_id, region=region, stream=stream, start=start_ms, end=end_ms,
            limit=limit, head=from_head,
        )  # fmt: skip
        cursor = await self.tokens.read(token, query=query, kind=str)
        page = domain.log_events_page(
            events, start_ms=start_ms, end_ms=end_ms, limit=limit, start_from_head=from_head, cursor=cursor
        )
        body = {
            "nextToken": await self.tokens.issue(page.forward, query=query),
            "prevToken": await self.tokens.issue(page.backward, query=query),
            "events": page.events,
        }
        return answer(body, source=ARCHIVE, cut=kept.cut)


def _as_pcluster(error: AwsError, *, unexpected: str = "") -> Exception:
    """An AWS error as pcluster's handlers turn it into an answer: its ValidationError a 400 with AWS's words,
    throttling and unreachable AWS as this service says them elsewhere (429, 503), anything else a 500."""
    if error.code == "ValidationError":
        return BadRequest(f"Bad Request: {error.message}")
    if aws_calls.is_unknown(error):
        return error
    return InternalServiceError(f"{unexpected}{error.message}")
