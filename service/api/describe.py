"""GET /v3/images/custom/{imageId}: the describe route, its memory of prepared answers, and its fast path.

A served answer (body, ETag, validators) is the same for every request of one record version and
signing window, so it is prepared once and kept. The fast path answers a describe whose record and
prepared answer are both in memory without entering Starlette; it sits inside the app's middleware
stack (see service.api.app), so every middleware still sees every request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import format_datetime

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.history_params import horizon, horizon_headers
from service.api.requests import (
    etag_matches,
    header,
    is_valid_image_id,
    parse_timestamp,
    query_params,
    region_from,
    validate_image_id,
)
from service.api.state import AppState
from service.domain import describe
from service.domain.models import CachedImage
from service.errors import NotFound
from service.ingest.lookup import Answer, not_found_message
from service.runtime import Runtime
from service.store import queries
from service.support.bounded import BoundedDict

PATH = "/v3/images/custom/{image_id}"
PREFIX = "/v3/images/custom/"
PREPARED_MAX_ENTRIES = 20_000

RawHeaders = list[tuple[bytes, bytes]]
MemoKey = tuple[str, str, int, int | None]


@dataclass(frozen=True)
class Prepared:
    """A served answer's bytes and headers, the same for every request of one version and signing window."""

    body: bytes
    etag: str
    # Encoded once: Starlette would rebuild and re-encode them on every request.
    headers_200: RawHeaders
    headers_304: RawHeaders


def etag_for(image: CachedImage, window: int | None) -> str:
    # The signing window is part of the tag: a client revalidating after it gets a freshly signed URL.
    return f'"{image.version}.{window}"' if window is not None else f'"{image.version}"'


def memo_key(runtime: Runtime, image: CachedImage) -> MemoKey:
    return (image.region, image.image_id, image.version, runtime.signer.window() if image.config.signable else None)


async def document_body(runtime: Runtime, image: CachedImage) -> bytes:
    """The served describe document: the stored one with the configuration URL signed now."""
    assert image.document is not None
    url, _ = await runtime.signer.url(region=image.region, config=image.config)
    body = b'{"imageConfiguration":{"url":' + orjson.dumps(describe.config_url(image.config, url)) + b"},"
    return body + image.document[1:]


class PreparedAnswers:
    """Prepared answers by (region, image, version, signing window); emptied when it grows past its bound."""

    def __init__(self) -> None:
        self._memo: BoundedDict[MemoKey, Prepared] = BoundedDict(PREPARED_MAX_ENTRIES)

    def get(self, key: MemoKey) -> Prepared | None:
        return self._memo.get(key)

    async def prepare(self, runtime: Runtime, image: CachedImage) -> Prepared:
        key = memo_key(runtime, image)
        prepared = self._memo.get(key)
        if prepared is None:
            body = await document_body(runtime, image)
            etag = etag_for(image, key[3])
            validators = [
                (b"etag", etag.encode()),
                (b"last-modified", format_datetime(image.changed_at, usegmt=True).encode()),
                # Revalidate every time (a browser would otherwise guess a freshness from Last-Modified).
                (b"cache-control", b"no-cache"),
            ]
            prepared = Prepared(
                body=body,
                etag=etag,
                headers_200=[
                    (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *validators
                ],
                headers_304=validators,
            )
            self._memo[key] = prepared
        return prepared


async def send_prepared(
    send: Send,
    prepared: Prepared,
    *,
    image: CachedImage,
    hit: bool,
    if_none_match: str | None,
    more: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    extra = [
        (b"age", b"%d" % max(0, int(time.time() - image.confirmed_at.timestamp()))),
        (b"x-cache", b"HIT" if hit else b"MISS"),
        *more,
    ]
    if etag_matches(if_none_match, prepared.etag):
        await send({"type": "http.response.start", "status": 304, "headers": prepared.headers_304 + extra})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": prepared.headers_200 + extra})
        await send({"type": "http.response.body", "body": prepared.body})


class DescribeImage:
    """The route: a plain ASGI endpoint, because it is the most-used one.

    The query string and the one header it needs are read straight from the scope, and the prepared
    bytes are sent as they are.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.answers = PreparedAnswers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.state.runtime
        image_id: str = scope["path_params"]["image_id"]
        validate_image_id(image_id)
        params = query_params(scope["query_string"])
        region = region_from(params.get("region"), runtime.settings)
        at = params.get("at")
        more: RawHeaders = []
        if at is not None:
            moment = parse_timestamp(at, name="at")
            past = await queries.image_at(runtime.engine, region=region, image_id=image_id, at=moment)
            if past is None or not past.exists:
                raise NotFound(not_found_message(image_id))
            answer = Answer(past, hit=True)
            oldest = horizon(runtime.settings)
            more = [(k.lower().encode(), v.encode()) for k, v in horizon_headers(oldest, past=moment < oldest).items()]
        else:
            # Recently read records are answered without awaiting anything.
            recent = runtime.lookup.recent(region=region, image_id=image_id)
            answer = (
                Answer(recent, hit=True)
                if recent is not None
                else await runtime.lookup.get(region=region, image_id=image_id)
            )
        prepared = await self.answers.prepare(runtime, answer.image)
        await send_prepared(
            send, prepared, image=answer.image, hit=answer.hit, if_none_match=header(scope, b"if-none-match"),
            more=more,
        )


class FastDescribe:
    """In front of the router: a describe whose record and prepared answer are both in memory is sent
    straight away. Anything else (a miss, `at=`, bad input, other routes) goes on to the router, which
    answers it in full, so no behaviour lives only here.
    """

    def __init__(self, app: ASGIApp, route: DescribeImage) -> None:
        self.app = app
        self.state = route.state
        self.answers = route.answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.state.opened
        if (
            runtime is not None
            and scope["type"] == "http"
            and scope["method"] == "GET"
            and not scope.get("root_path")
            and scope["path"].startswith(PREFIX)
        ):
            image_id: str = scope["path"][len(PREFIX) :]
            if is_valid_image_id(image_id):
                params = query_params(scope["query_string"])
                region = params.get("region") or runtime.settings.default_region
                if "at" not in params and region in runtime.settings.regions:
                    image = runtime.lookup.recent(region=region, image_id=image_id)
                    if image is not None:
                        prepared = self.answers.get(memo_key(runtime, image))
                        if prepared is not None:
                            await send_prepared(
                                send, prepared, image=image, hit=True, if_none_match=header(scope, b"if-none-match")
                            )
                            return
        await self.app(scope, receive, send)
