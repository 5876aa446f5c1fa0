"""gzip where it pays: list pages, history answers and the board's reads, when the client accepts it.

A 100-image list page is ~16 KB as JSON and ~1.7 KB gzipped; a describe answer (~1.4 KB) is left as it
is, as are answers under MIN_SIZE: there, compressing costs more time than it saves bytes.

Validators survive compression: a compressed answer carries the same entity tag made weak (`W/"x"`, as
nginx does, since the bytes differ), and If-None-Match compares weakly, so a client (or a proxy that
weakened the tag itself) revalidating with either form gets its 304. Bodies that are served again and
again (a list page) are compressed once and remembered by their entity tag.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from service.api.errors import JSON
from service.api.requests import etag_matches, weighted
from service.support.bounded import BoundedDict

MIN_SIZE = 1024
LEVEL = 6
MEMO_MAX_ENTRIES = 4096


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether Accept-Encoding allows gzip (`gzip`, `x-gzip` or `*`, unless given q=0)."""
    if not accept_encoding:
        return False
    wildcard = False
    for item in accept_encoding.split(","):
        coding, quality = weighted(item)
        if coding in {"gzip", "x-gzip"}:
            return quality > 0
        if coding == "*":
            wildcard = quality > 0
    return wildcard


def weak(etag: str) -> str:
    return etag if etag.startswith("W/") else f"W/{etag}"


class Compressor:
    """Negotiates the coding of one route's answers, remembering compressed bodies that have an entity tag."""

    def __init__(self) -> None:
        self._memo: BoundedDict[str, bytes] = BoundedDict(MEMO_MAX_ENTRIES)

    def compressed(self, body: bytes, *, etag: str | None) -> bytes:
        if etag is None:
            return gzip.compress(body, LEVEL)
        remembered = self._memo.get(etag)
        if remembered is None:
            remembered = self._memo[etag] = gzip.compress(body, LEVEL)
        return remembered

    def answer(
        self,
        request: Request,
        body: bytes,
        *,
        etag: str | None = None,
        headers: Mapping[str, str] | None = None,
        media_type: str = JSON,
    ) -> Response:
        """200 with `body` (gzipped when accepted and worth it), or 304 when If-None-Match matches `etag`."""
        out = dict(headers or {})
        compress = False
        if len(body) >= MIN_SIZE:
            # The coding depends on the request's Accept-Encoding: caches must keep the two apart.
            out["Vary"] = "Accept-Encoding"
            compress = accepts_gzip(request.headers.get("accept-encoding"))
        if etag is not None:
            out["ETag"] = weak(etag) if compress else etag
            if etag_matches(request.headers.get("if-none-match"), etag):
                return Response(status_code=304, headers=out)
        if not compress:
            return Response(body, media_type=media_type, headers=out)
        out["Content-Encoding"] = "gzip"
        return Response(self.compressed(body, etag=etag), media_type=media_type, headers=out)
