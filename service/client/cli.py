"""The client commands of `statuscache`: describe-image and list-images as `pcluster` prints them, plus
image-history and watch. They talk HTTP to a running service and nothing else: no settings, database or AWS.

`pcluster` compatibility, so a script written for `pcluster describe-image` works unchanged: the same
flags (-i/--image-id, -r/--region, --image-status, --next-token, --query, --debug), the region from
AWS_DEFAULT_REGION when --region is not given, the API's JSON with pcluster's key order printed with
`json.dumps(..., indent=2)` on stdout, exit 0; on an error `{"message": ...}` the same way, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

import jmespath
import jmespath.exceptions

from service.client import api, errors, from_environment, shapes

COMMANDS = ("describe-image", "list-images", "image-history", "watch")
# pcluster's CLI checks the id against its OpenAPI pattern before calling anything, in these words.
IMAGE_ID_PATTERN = "^[a-zA-Z][a-zA-Z0-9-]+$"
HISTORY_COLUMNS = ("TIME", "BUILD STATUS", "STACK STATUS", "IMAGE BUILDER", "AMI", "SOURCE", "REASON")


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
    region: str | None = args.region
    if region is None and args.command in ("describe-image", "list-images"):
        # As pcluster does: without --region, the region the AWS tools would use.
        region = os.environ.get("AWS_DEFAULT_REGION") or None
    try:
        with api.Client(args.endpoint or url, token=token) as client:
            handler: Callable[[api.Client, argparse.Namespace, str | None, TextIO], None] = _HANDLERS[args.command]
            handler(client, args, region, out)
    except (errors.ApiException, Refused) as exc:
        message = exc.message if isinstance(exc, errors.ApiException) else str(exc)
        _print(out, {"message": message})
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


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


def _describe(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    document = client.api(api.image_path(args.image_id), _params(region=region, at=args.at))
    _print(out, _query(shapes.pcluster_describe(document), args.query))


def _list(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    page = client.api(
        "/v3/images/custom", _params(imageStatus=args.image_status, region=region, nextToken=args.next_token)
    )
    _print(out, _query(shapes.pcluster_list(page), args.query))


def _history(client: api.Client, args: argparse.Namespace, region: str | None, out: TextIO) -> None:
    _check_image_id(args.image_id)
    path = api.image_path(args.image_id, "/history")
    query = _params(region=region, since=args.since, until=args.until, limit="1000")
    document = client.api(path, query)
    transitions = list(document["transitions"])
    while document.get("nextToken"):
        document = client.api(path, {**query, "nextToken": document["nextToken"]})
        transitions += document["transitions"]
    whole = {"imageId": document["imageId"], "region": document["region"], "transitions": transitions}
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


_HANDLERS: dict[str, Callable[[api.Client, argparse.Namespace, str | None, TextIO], None]] = {
    "describe-image": _describe,
    "list-images": _list,
    "image-history": _history,
    "watch": _watch,
}
