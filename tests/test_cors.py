"""CORS: listed origins read the API and the stream with credentials, preflights are answered, others get nothing."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import pytest_asyncio

from service.api.app import create_app
from service.demo.fakeaws import FakeAws
from service.errors import ConfigurationError
from service.runtime import Runtime
from service.settings import from_env
from tests.conftest import REGION, serving

DASHBOARD = "https://dashboard.example.com"
LOCAL_DASHBOARD = "http://localhost:3000"
STRANGER = "https://evil.example.net"
TOKEN = "sct_cors_" + "C" * 40
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers")


@pytest_asyncio.fixture
async def app_settings(runtime: Runtime, tmp_path: Path) -> AsyncIterator[Runtime]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"dashboard {hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    runtime.settings = dataclasses.replace(
        runtime.settings, api_tokens_file=str(tokens), cors_origins=(DASHBOARD, LOCAL_DASHBOARD)
    )
    yield runtime


@pytest_asyncio.fixture
async def http(app_settings: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings.settings, runtime=app_settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as client:
        yield client


def auth(origin: str | None = DASHBOARD) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    return headers | ({"Origin": origin} if origin else {})


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_listed_origin_reads_answers_with_credentials(http: httpx.AsyncClient, aws_state: FakeAws) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cors-image")
    for _ in range(3):  # the last one from the fast path
        response = await http.get("/v3/images/custom/cors-image", params={"region": REGION}, headers=auth())
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == DASHBOARD
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "Origin" in response.headers["vary"]
        exposed = response.headers["access-control-expose-headers"]
        for header in ("ETag", "X-Cache", "Retry-After", "WWW-Authenticate"):
            assert header in exposed
    assert response.headers["x-cache"] == "HIT"
    other = await http.get("/stats", headers=auth(LOCAL_DASHBOARD))
    assert other.headers["access-control-allow-origin"] == LOCAL_DASHBOARD


@pytest.mark.asyncio
async def test_a_401_carries_cors_headers_so_the_dashboard_can_ask_for_a_token(http: httpx.AsyncClient) -> None:
    response = await http.get("/stats", headers={"Origin": DASHBOARD})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == DASHBOARD
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.asyncio
@pytest.mark.parametrize("origin", [STRANGER, "null", DASHBOARD + ".evil.net", "http://dashboard.example.com"])
async def test_any_other_origin_gets_no_cors_header_and_no_credentials(http: httpx.AsyncClient, origin: str) -> None:
    response = await http.get("/stats", headers=auth(origin))
    # The server answers (a browser would still make the request), but without CORS headers the browser
    # hands the page nothing; and no credentials are ever allowed for an unlisted origin.
    assert response.status_code == 200
    for header in CORS_HEADERS:
        assert header not in response.headers
    assert response.headers["vary"] == "Origin"


@pytest.mark.asyncio
async def test_a_preflight_is_answered_before_authentication(http: httpx.AsyncClient) -> None:
    response = await http.options(
        "/v3/images/custom/cors-image",
        headers={
            "Origin": DASHBOARD,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, if-none-match",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == DASHBOARD
    assert response.headers["access-control-allow-credentials"] == "true"
    assert set(response.headers["access-control-allow-methods"].split(", ")) == {"GET", "HEAD", "POST", "DELETE"}
    allowed = response.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "if-none-match", "last-event-id"):
        assert header in allowed
    assert int(response.headers["access-control-max-age"]) > 0
    sign_in = await http.options(
        "/v3/session", headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "POST"}
    )
    assert sign_in.status_code == 204


@pytest.mark.asyncio
async def test_a_preflight_from_another_origin_or_for_another_method_is_refused(http: httpx.AsyncClient) -> None:
    stranger = await http.options("/stats", headers={"Origin": STRANGER, "Access-Control-Request-Method": "GET"})
    assert stranger.status_code == 403 and list(orjson.loads(stranger.content)) == ["message"]
    for header in (*CORS_HEADERS, "access-control-allow-methods"):
        assert header not in stranger.headers
    put = await http.options("/stats", headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "PUT"})
    assert put.status_code == 403 and "access-control-allow-methods" not in put.headers


@pytest.mark.asyncio
async def test_the_change_stream_is_readable_cross_origin(app_settings: Runtime) -> None:
    app = create_app(app_settings.settings, runtime=app_settings)
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        async with client.stream("GET", "/v3/image-changes", headers=auth()) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == DASHBOARD
            assert stream.headers["access-control-allow-credentials"] == "true"
            assert await anext(stream.aiter_lines()) == "retry: 2000"
        async with client.stream("GET", "/v3/image-changes", headers=auth(STRANGER)) as stream:
            assert "access-control-allow-origin" not in stream.headers


@pytest.mark.asyncio
async def test_without_origins_configured_nothing_is_added(runtime: Runtime) -> None:
    app = create_app(runtime.settings, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://statuscache") as client:
        response = await client.get("/stats", headers={"Origin": DASHBOARD})
        preflight = await client.options(
            "/stats", headers={"Origin": DASHBOARD, "Access-Control-Request-Method": "GET"}
        )
    assert "access-control-allow-origin" not in response.headers and "vary" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("", ()),
        ("https://a.example.com", ("https://a.example.com",)),
        (" https://A.example.com , http://localhost:3000,https://a.example.com", ("https://a.example.com", "http://localhost:3000")),
        ("http://[::1]:8080", ("http://[::1]:8080",)),
    ],
)  # fmt: skip
def test_origins_are_read_as_a_list_lower_cased_and_deduplicated(raw: str, origins: tuple[str, ...]) -> None:
    assert from_env({"STATUSCACHE_CORS_ORIGINS": raw}).cors_origins == origins


@pytest.mark.parametrize(
    "raw", ["*", "https://a.example.com/", "https://a.example.com/path", "a.example.com", "null", "https://*.example.com"]
)
def test_anything_but_an_exact_origin_is_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="STATUSCACHE_CORS_ORIGINS"):
        from_env({"STATUSCACHE_CORS_ORIGINS": raw})
