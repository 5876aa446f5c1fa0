"""GET /openapi.json: the OpenAPI document of every route this service serves (service/api/openapi.json).

The document is written by hand and shipped as package data; tests/test_openapi.py validates it, checks
that every route of the app is in it, and runs schemathesis against the live service from it.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from service.api.errors import JSON

PATH = "/openapi.json"


def document() -> bytes:
    return resources.files("service.api").joinpath("openapi.json").read_bytes()


class OpenApi:
    def __init__(self) -> None:
        self._body = document()

    async def endpoint(self, request: Request) -> Response:
        return Response(self._body, media_type=JSON)
