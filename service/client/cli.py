"""The client commands of `statuscache`: describe-image and list-images as `pcluster` prints them, plus
image-history and watch. They talk HTTP to a running service and nothing else: no settings, database or AWS.

`pcluster` compatibility, so a script written for `pcluster describe-image` works unchanged: the same
flags (-i/--image-id, -r/--region, --image-status, --next-token, --query, --debug), the region from
AWS_DEFAULT_REGION when --region is not given, the API's JSON with pcluster's key order printed with
`json.dumps(..., indent=2)` on stdout, exit 0; on an error `{"message": ...}` the same way, exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

import jmespath
import jmespath.exceptions

from service.client import api, core, errors, from_environment, shapes

COMMANDS = (
    "describe-image", "list-images", "image-history", "watch", "transitions", "builds", "wait-image", "subscriptions",
    "get-image-stack-events", "list-image-log-streams", "get-image-log-events",
)  # fmt: skip
SUBSCRIPTION_COLUMNS = ("NAME", "KIND", "TARGET", "CURSOR", "LAG", "DEAD LETTERS", "STATE", "LAST ERROR")
# wait-image's exit statuses besides 0 (reached) and 1 (an error talking to the service).
CANNOT_REACH = 3
TIMED_OUT = 4
# The commands pcluster has too: its region default (AWS_DEFAULT_REGION) and its output.
PCLUSTER_COMMANDS = (
    "describe-image", "list-images", "get-image-stack-events", "list-image-log-streams", "get-image-log-events",
)  # fmt: skip
# pcluster's CLI checks the id against its OpenAPI pattern before calling anything, in these words.
IMAGE_ID_PATTERN = "^[a-zA-Z][a-zA-Z0-9-]+$"
HISTORY_COLUMNS = ("TIME", "BUILD STATUS", "STACK STATUS", "IMAGE BUILDER", "AMI", "SOURCE", "REASON")
# The fleet's transitions stream a row at a time (an export can be millions of rows): fixed widths.
TRANSITION_WIDTHS = (24, 24, 15, 24, 13, 9, 12)
TRANSITION_COLUMNS = ("TIME", "IMAGE", "BUILD STATUS", "STACK STATUS", "IMAGE BUILDER", "AMI", "SOURCE", "REASON")
BUILD_COLUMNS = ("START", "IMAGE", "VERSION", "OUTCOME", "DURATION", "REASON")
SUMMARY_COLUMNS = ("GROUP", "BUILDS", "COMPLETE", "FAILED", "DELETED", "IN PROGRESS", "SUCCESS", "P50", "P90", "MAX")
# --since 7d: a moment as a span before now (s, m, h, d, w), besides ISO 8601.
RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class Refused(Exception):
    """A pcluster-style refusal before any request: printed as {"message": ...}, exit 1."""


def add_commands(commands: Any) -> None:
    """The four commands, on the `statuscache` parser's subparsers."""
    describe = commands.add_parser(
        "describe-image", help="pcluster describe-image, from the service (STATUSCACHE_URL or --endpoint)"
    )
    _common(describe)
    _image_id(describe)
    describe.add_argument("--at", help="the image as the cache knew it at this moment (ISO 8601)")
    describe.add_argument("--query", help="JMESPath query to perform on output.")

    listing = commands.add_parser("list-images", help="pcluster list-images, from the service")
    _common(listing)
    listing.add_argument(
        "--image-status", required=True, choices=["AVAILABLE", "PENDING", "FAILED"],
        help="Filter images by the status provided.",
    )  # fmt: skip
    listing.add_argument("--next-token", help="Token to use for paginated requests.")
    listing.add_argument("--at", help="the list as it would have answered at this moment (ISO 8601, or 7d, 12h ago)")
    listing.add_argument("--query", help="JMESPath query to perform on output.")

    history = commands.add_parser("image-history", help="an image's status transitions, oldest first")
    _common(history)
    _image_id(history)
    history.add_argument("--since", help="only transitions at or after this moment (ISO 8601)")
    history.add_argument("--until", help="only transitions at or before this moment (ISO 8601)")
    history.add_argument("--output", choices=["table", "json"], default="table")

    watch = commands.add_parser("watch", help="one line per change, as it happens (Ctrl-C to stop)")
    _common(watch)
    watch.add_argument("-i", "--image-id", help="only this image")
    watch.add_argument("--last-event-id", type=int, help="resume after this change sequence")
    watch.add_argument("--output", choices=["text", "json"], default="text")

    moment = "(ISO 8601, or a span before now: 30m, 12h, 7d, 2w)"
    transitions = commands.add_parser("transitions", help="every image's status changes in a window, oldest first")
    _common(transitions)
    transitions.add_argument("--since", help=f"from this moment, inclusive {moment}")
    transitions.add_argument("--until", help=f"to this moment, exclusive {moment}")
    transitions.add_argument("--image-build-status", help="only transitions to this build status")
    transitions.add_argument("-i", "--image-id", help="only this image")
    transitions.add_argument("--source", help="only transitions seen this way (event, reconcile, lookup)")
    transitions.add_argument("--order", choices=["asc", "desc"], help="oldest first (asc, the default) or newest")
    transitions.add_argument(
        "--output", choices=["table", "json", "ndjson", "csv"], default="table",
        help="table (default); json: the API's items as one JSON array; ndjson/csv: the service's export, streamed",
    )  # fmt: skip

    # ParallelCluster's image log operations, with pcluster's flags: answered after cleanup from kept evidence.
    stack_events = commands.add_parser(
        "get-image-stack-events", help="pcluster get-image-stack-events, kept after the stack is gone"
    )
    _common(stack_events)
    _image_id(stack_events)
    stack_events.add_argument("--next-token", help="Token to use for paginated requests.")
    stack_events.add_argument("--query", help="JMESPath query to perform on output.")
    streams = commands.add_parser(
        "list-image-log-streams", help="pcluster list-image-log-streams, kept after the log group is gone"
    )
    _common(streams)
    _image_id(streams)
    streams.add_argument("--next-token", help="Token to use for paginated requests.")
    streams.add_argument("--query", help="JMESPath query to perform on output.")
    log_events = commands.add_parser(
        "get-image-log-events", help="pcluster get-image-log-events, kept after the log group is gone"
    )
    _common(log_events)
    _image_id(log_events)
    log_events.add_argument("--log-stream-name", required=True, help="Name of the log stream.")
    log_events.add_argument("--next-token", help="Token to use for paginated requests.")
    log_events.add_argument("--start-from-head", help="If true, the earliest log events are returned first.")
    log_events.add_argument("--limit", help="The maximum number of log events returned.")
    log_events.add_argument("--start-time", help="The start of the time range, in ISO 8601 format.")
    log_events.add_argument("--end-time", help="The end of the time range, in ISO 8601 format.")
    log_events.add_argument("--query", help="JMESPath query to perform on output.")

    builds = commands.add_parser("builds", help="builds as units (start, end, duration, outcome, reason), or --summary")
    _common(builds)
    builds.add_argument("--since", help=f"builds that started at or after this moment {moment}")
    builds.add_argument("--until", help=f"builds that started before this moment {moment}")
    builds.add_argument("--version", help="only builds of this ParallelCluster version")
    builds.add_argument("--outcome", choices=["complete", "failed", "deleted", "in_progress"])
    builds.add_argument("-i", "--image-id", help="only this image's builds")
    builds.add_argument("--order", choices=["asc", "desc"], help="oldest first (asc, the default) or newest")
    builds.add_argument("--summary", action="store_true", help="counts, success rate, p50/p90/max, failure reasons")
    builds.add_argument("--group-by", choices=["version", "week", "outcome"], default="version",
                        help="the summary's groups (default version)")
    builds.add_argument("--output", choices=["table", "json"], default="table")

    waiting = commands.add_parser(
        "wait-image", help="wait for an image to be done, on the change stream: exit 0 reached, 3 never will, "
        "4 timed out, 1 an error talking to the service",
    )  # fmt: skip
    _common(waiting)
    _image_id(waiting)
    waiting.add_argument("--until", choices=["complete", "deleted"], default="complete",
                         help="BUILD_COMPLETE (default), or deleted (gone or DELETE_COMPLETE)")
    waiting.add_argument("--timeout", type=_seconds, help="give up after this many seconds (exit 4); default never")

    subscribed = commands.add_parser(
        "subscriptions", help="each notification subscription's health: cursor, lag, last error, dead letters"
    )
    subscribed.add_argument("--endpoint", help="the service's URL (env STATUSCACHE_URL, default http://127.0.0.1:8080)")
    subscribed.add_argument("--output", choices=["table", "json"], default="table")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="the service's URL (env STATUSCACHE_URL, default http://127.0.0.1:8080)")
    parser.add_argument("-r", "--region", help="AWS Region (describe-image and list-images: AWS_DEFAULT_REGION "
                        "if not given, as pcluster; else the service's first region)")
    parser.add_argument("--debug", action="store_true", help="accepted as pcluster accepts it; changes nothing")


def _image_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--image-id", required=True, help="Id of the image.")


def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run one client command; the exit status."""
    out = out or sys.stdout
    url, token = from_environment()
    region: str | None = getattr(args, "region", None)
    if region is None and args.command in (*PCLUSTER_COMMANDS, "wait-image"):
        # As pcluster does: without --region, the region the AWS tools would use.
        region = os.environ.get("AWS_DEFAULT_REGION") or None
    try:
        with api.Client(args.endpoint or url, token=token) as client:
            handler: Handler = _HANDLERS[args.command]
            status = handler(client, args, region, out)
    except (errors.ApiException, Refused) as exc:
        message = exc.message if isinstance(exc, errors.ApiException) else str(exc)
        _print(out, {"message": message})
        return 1
    except KeyboardInterrupt:
        return 130
    return status or 0


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 10**9:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}")
    return seconds


def _print(out: TextIO, value: Any) -> None:
    # What pcluster's CLI does: print(json.dumps(ret, indent=2)), and nothing at all for an empty result.
    if value:
        print(json.dumps(value, indent=2), file=out)


def _query(value: Any, query: str | None) -> Any:
    if not query:
        return value
    try:
        return jmespath.search(query, value)
    except jmespath.exceptions.ParseError as exc:
        raise Refused("Invalid query string.") from exc


def _check_image_id(image_id: str) -> None:
    if not re.fullmatch(IMAGE_ID_PATTERN, image_id):
        raise Refused(f"Bad Request: '{image_id}' does not match '{IMAGE_ID_PATTERN}' - 'image-id'")


def _params(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}


def _moment(value: str | None, flag: str) -> str | None:
    """--since/--until/--at: ISO 8601 goes to the service as given (it checks it); 7d is now minus 7 days."""
    if value is None:
        return None
    relative = RELATIVE.fullmatch(value.strip())
    if relative is None:
        if not value[:1].isdigit():
            raise Refused(f"Bad Request: {flag} must be an ISO 8601 timestamp or a span such as 30m, 12h, 7d, 2w")
        return value
    count, unit = relative.groups()
    return core.moment(timedelta(**{UNITS[unit]: int(count)}))


def _horizon_note(document: dict[str, Any], out: TextIO) -> None:
    if document.get("pastHorizon"):
        print(f"(history is kept from {document['horizon']} on: earlier changes are no longer known)", file=out)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _transitions(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    if args.image_id is not None:
        _check_image_id(args.image_id)
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if args.output in ("ndjson", "csv"):
        # The service's own export, byte for byte: a file of any size, never held here.
        for chunk in client.export_transitions(
            args.output, region, since, until, image_build_status=args.image_build_status, image_id=args.image_id,
            source=args.source, order=args.order,
        ):  # fmt: skip
            out.write(chunk.decode())
        out.flush()
        return
    query = _params(
        region=region, since=since, until=until, imageBuildStatus=args.image_build_status, imageId=args.image_id,
        source=args.source, order=args.order, limit=api.FLEET_PAGE,
    )  # fmt: skip
    first: dict[str, Any] = {}
    rows = client.api_pages(api.TRANSITIONS_PATH, query, "transitions", first)
    if args.output == "json":
        print(json.dumps(list(rows), indent=2), file=out)
        return
    peeked = next(rows, None)  # the first page is fetched: its horizon is known before the header
    _horizon_note(first, out)
    if peeked is not None:
        rows = itertools.chain([peeked], rows)
    print(_fixed(TRANSITION_COLUMNS), file=out)
    count = 0
    for item in rows:
        print(_fixed((item["time"], item["imageId"], *_history_row(item)[1:])), file=out)
        count += 1
    print(f"{count} transitions", file=out)


def _fixed(cells: tuple[str, ...]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, (*TRANSITION_WIDTHS, 0), strict=True)).rstrip()


def _builds(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    if args.summary:
        document = client.api(api.SUMMARY_PATH, _params(region=region, since=since, until=until, groupBy=args.group_by))
        if args.output == "json":
            print(json.dumps(document, indent=2), file=out)
            return
        _print_summary(document, out)
        return
    if args.image_id is not None:
        _check_image_id(args.image_id)
    query = _params(
        region=region, since=since, until=until, version=args.version, outcome=args.outcome, imageId=args.image_id,
        order=args.order, limit=api.FLEET_PAGE,
    )  # fmt: skip
    first: dict[str, Any] = {}
    found = list(client.api_pages(api.BUILDS_PATH, query, "builds", first))
    if args.output == "json":
        print(json.dumps(found, indent=2), file=out)
        return
    _horizon_note(first, out)
    rows = [BUILD_COLUMNS, *(_build_row(build) for build in found)]
    _table(rows, out)
    print(f"{len(found)} builds", file=out)


def _build_row(build: dict[str, Any]) -> tuple[str, ...]:
    start = build["startTime"] if build.get("startExact", True) else "~" + build["startTime"]
    reason = build.get("cloudformationStackStatusReason") or build.get("imagebuilderImageStatusReason") or ""
    return (
        start, build["imageId"], build.get("version", "-"), build["outcome"],
        _duration(build.get("durationSeconds")), reason,
    )  # fmt: skip


def _print_summary(document: dict[str, Any], out: TextIO) -> None:
    window = f"since {document['since']}" + (f" until {document['until']}" if "until" in document else "")
    print(f"Builds in {document['region']} {window}, by {document['groupBy']}", file=out)
    _horizon_note(document, out)
    rows: list[tuple[str, ...]] = [SUMMARY_COLUMNS]
    for group in document["groups"]:
        durations = group.get("durationSeconds") or {}
        rate = group.get("successRate")
        rows.append((
            str(group["key"]), str(group["builds"]), str(group["complete"]), str(group["failed"]),
            str(group["deleted"]), str(group["inProgress"]), "-" if rate is None else f"{rate:.0%}",
            _duration(durations.get("p50")), _duration(durations.get("p90")), _duration(durations.get("max")),
        ))  # fmt: skip
    if len(rows) == 1:
        print("No builds.", file=out)
    else:
        _table(rows, out)
    reasons = document["failureReasons"]
    if reasons:
        print("\nMost frequent failure reasons:", file=out)
        _table([("COUNT", "REASON"), *((str(item["count"]), item["reason"]) for item in reasons)], out)


def _describe(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    document = client.api(api.image_path(args.image_id), _params(region=region, at=args.at))
    _print(out, _query(shapes.pcluster_describe(document), args.query))


def _list(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    page = client.api(
        "/v3/images/custom",
        _params(imageStatus=args.image_status, region=region, nextToken=args.next_token, at=_moment(args.at, "--at")),
    )
    _print(out, _query(shapes.pcluster_list(page), args.query))


def _history(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    first: dict[str, Any] = {}
    query = _params(region=region, since=args.since, until=args.until, limit="1000")
    transitions = list(client.api_pages(api.image_path(args.image_id, "/history"), query, "transitions", first))
    whole = {"imageId": first["imageId"], "region": first["region"], "transitions": transitions}
    if args.output == "json":
        print(json.dumps(whole, indent=2), file=out)
        return
    print(f"{whole['imageId']} in {whole['region']}: {len(transitions)} transitions", file=out)
    rows = [HISTORY_COLUMNS, *(_history_row(item) for item in transitions)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(HISTORY_COLUMNS))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _history_row(item: dict[str, Any]) -> tuple[str, ...]:
    reason = item.get("cloudformationStackStatusReason") or item.get("imagebuilderImageStatusReason") or ""
    return (
        item["time"],
        "GONE" if item.get("gone") else item.get("imageBuildStatus", "-"),
        item.get("cloudformationStackStatus", "-"),
        item.get("imagebuilderImageStatus", "-"),
        item.get("ec2AmiState", "-"),
        item["source"],
        reason,
    )


def _watch(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    if args.image_id is not None:
        _check_image_id(args.image_id)
    for event in client.events(region=region, image_id=args.image_id, last_event_id=args.last_event_id):
        if args.output == "json":
            line = json.dumps({"id": event.id, "event": event.event, "data": event.data})
        else:
            line = _watch_line(event.id, event.event, event.data)
        print(line, file=out, flush=True)


def _watch_line(seq: int, kind: str, data: dict[str, Any]) -> str:
    where = f"{seq}  {data.get('region', '?')}  {data.get('imageId', '?')}"
    if kind != "image":
        return f"{where}  GONE"
    ami = data.get("ec2AmiInfo") or {}
    parts = [
        data.get("imageBuildStatus", "-"),
        data.get("cloudformationStackStatus") or ami.get("state") or "-",
        data.get("imagebuilderImageStatus", ""),
    ]
    return "  ".join([where, *parts]).rstrip()


def _wait_image(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> int:
    _check_image_id(args.image_id)
    try:
        ended = client.image_outcome(args.image_id, region, until=args.until, timeout=args.timeout)
    except errors.ImageWaitTimeout as exc:
        print(exc, file=sys.stderr)
        return TIMED_OUT
    document = ended.document
    # As describe-image prints it: the document, or for an image that is gone pcluster's {"message": ...}.
    _print(out, {"message": document.get("message", "")} if ended.gone else shapes.pcluster_describe(document))
    print(ended.reason, file=sys.stderr)
    return 0 if ended.reached else CANNOT_REACH


def _subscriptions(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    found = client.api("/v3/subscriptions")["subscriptions"]
    if args.output == "json":
        print(json.dumps(found, indent=2), file=out)
        return
    if not found:
        print("No subscriptions (STATUSCACHE_SUBSCRIPTIONS_FILE names none).", file=out)
        return
    rows: list[tuple[str, ...]] = [SUBSCRIPTION_COLUMNS]
    for item in found:
        state = "disabled" if item["disabled"] else ("retrying" if item.get("attempts") else "ok")
        cursor = "-" if item["cursor"] is None else str(item["cursor"])
        rows.append((
            item["name"], item["kind"], item["target"], cursor, _duration(item["lagSeconds"]),
            str(item["deadLetters"]), state, item.get("disabledReason") or item.get("lastError") or "",
        ))  # fmt: skip
    _table(rows, out)


def _stack_events(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    call = core.stack_events_call(args.image_id, region, args.next_token)
    _print(out, _query(client.api(call.path, call.params), args.query))


def _log_streams(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    call = core.log_streams_call(args.image_id, region, args.next_token)
    _print(out, _query(client.api(call.path, call.params), args.query))


def _log_events(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    # pcluster's CLI types its flags before any request, in these words.
    head: bool | None = None
    if args.start_from_head is not None:
        if args.start_from_head.lower() not in ("true", "false"):
            raise Refused("Bad Request: Wrong type, expected 'boolean' for parameter 'start-from-head'")
        head = args.start_from_head.lower() == "true"
    limit: int | None = None
    if args.limit is not None:
        if not re.fullmatch(r"[+-]?[0-9]+", args.limit):
            raise Refused("Bad Request: Wrong type, expected 'integer' for parameter 'limit'")
        limit = int(args.limit)
    call = core.log_events_call(
        args.image_id, args.log_stream_name, region, args.next_token, start_from_head=head, limit=limit,
        start_time=args.start_time, end_time=args.end_time,
    )  # fmt: skip
    _print(out, _query(client.api(call.path, call.params), args.query))



# Each command's work; an exit status other than 0 when it has one of its own to give.
Handler = Callable[[api.Client, argparse.Namespace, str | None, TextIO], int | None]

_HANDLERS: dict[str, Handler] = {
    "describe-image": _describe,
    "list-images": _list,
    "image-history": _history,
    "watch": _watch,
    "transitions": _transitions,
    "builds": _builds,
    "wait-image": _wait_image,
    "subscriptions": _subscriptions,
    "get-image-stack-events": _stack_events,
    "list-image-log-streams": _log_streams,
    "get-image-log-events": _log_events,
}
