"""The status board: GET / (the page) and GET /board/{name} (its script and style), package data served from memory.

No build step and nothing from a CDN: three hand-written files under service/api/board/, read once
and shipped in the wheel. They hold no data (the page reads the public API, with the browser's session
when authentication is on), so they are served to anyone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from service.api.compression import Compressor
from service.errors import NotFound

PAGE_PATH = "/"
ASSET_PATH = "/board/{name}"
PAGE = "index.html"
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
# The page may only run its own script and style, and talk to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for entry in resources.files("service.api").joinpath("board").iterdir():
        suffix = entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in MEDIA_TYPES:
            body = entry.read_bytes()
            assets[entry.name] = Asset(body, MEDIA_TYPES[suffix], f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets


class Board:
    def __init__(self) -> None:
        self.assets = load_assets()
        self._compressor = Compressor()

    async def page(self, request: Request) -> Response:
        return self._serve(request, PAGE)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name == PAGE or name not in self.assets:
            raise NotFound(f"No such file of the status board: {name!r}")
        return self._serve(request, name)

    def _serve(self, request: Request, name: str) -> Response:
        asset = self.assets[name]
        # Revalidated on every load (cheap: a 304), so a new release is picked up at once.
        headers = {"Cache-Control": "no-cache", **SECURITY_HEADERS}
        return self._compressor.answer(
            request, asset.body, etag=asset.etag, headers=headers, media_type=asset.media_type
        )
