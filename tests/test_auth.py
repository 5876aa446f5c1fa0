"""Authentication over HTTP: every protected route (the fast path too) needs a token or a session cookie, a refusal
costs no SQL and no AWS, the open routes stay open, and no token ever reaches a log."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import auth
from service.api.app import StatusCacheApp, create_app
from service.api.sessions import COOKIE, KEY_NAME, Sessions
from service.api.state import AppState
from service.api.tokens import Caller, digest
from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.store import db
from tests.conftest import REGION, serving

ALICE = "sct_alice_" + "A" * 40
BOB = "sct_bob_" + "B" * 40
NOBODY = "sct_nobody_" + "N" * 40
DESCRIBE = "/v3/images/custom/{}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bearer_header(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def line(name: str, token: str) -> str:
    return f"{name} {hashlib.sha256(token.encode()).hexdigest()}"


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Drive the app's ASGI lifespan (start-up before the block, shutdown after), as uvicorn does."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    started = await asyncio.wait_for(outbox.get(), timeout=10)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(task, timeout=10)


@contextmanager
def counting_sql(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement the engine sends while the block runs."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


class SeenCallers:
    """An outer middleware, as a request log or the live-lookup budget would be: what auth told it in the scope."""

    seen: list[str | None]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http":
            SeenCallers.seen.append(scope.get(auth.CALLER))


@dataclass
class Protected:
    app: StatusCacheApp
    http: httpx.AsyncClient
    runtime: Runtime
    tokens_path: Path


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# who may call\n{line('alice', ALICE)}\n\n{line('bob', BOB)}\n")
    return path


@asynccontextmanager
async def protected_app(runtime: Runtime, tokens_path: Path, **settings: Any) -> AsyncIterator[Protected]:
    configured = dataclasses.replace(runtime.settings, api_tokens_file=str(tokens_path), **settings)
    SeenCallers.seen = []
    app = create_app(configured, runtime=runtime, middleware=[Middleware(SeenCallers)])
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://statuscache") as http:
            yield Protected(app=app, http=http, runtime=runtime, tokens_path=tokens_path)


@pytest_asyncio.fixture
async def protected(runtime: Runtime, tokens_path: Path) -> AsyncIterator[Protected]:
    async with protected_app(runtime, tokens_path) as made:
        yield made


def assert_refused(response: httpx.Response, *, invalid: bool) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is invalid
    body = orjson.loads(response.content)
    assert list(body) == ["message"] and body["message"]
    assert response.headers["content-type"] == "application/json"


async def cache_image(protected: Protected, aws: FakeAws, image_id: str) -> None:
    """Describe it with a token until the fast path answers it (prepared and in memory)."""
    for _ in range(3):
        response = await protected.http.get(DESCRIBE.format(image_id), params={"region": REGION}, headers=bearer(ALICE))
        assert response.status_code == 200
    assert response.headers["x-cache"] == "HIT"


PROTECTED_REQUESTS = [
    ("GET", DESCRIBE.format("cached-image") + f"?region={REGION}"),  # the cached describe: the fast path
    ("GET", DESCRIBE.format("never-seen") + f"?region={REGION}"),  # a miss would be a live lookup
    ("GET", DESCRIBE.format("cached-image") + "/history"),
    ("GET", "/v3/images/custom?imageStatus=AVAILABLE"),
    ("GET", "/v3/image-changes"),
    ("GET", "/stats"),
    ("HEAD", DESCRIBE.format("cached-image")),
    ("GET", "/no/such/route"),
    ("POST", "/v3/session"),
]
BAD_CREDENTIALS = {
    "no credentials": ({}, False),
    "unknown token": (bearer(NOBODY), True),
    "near-miss token": (bearer(ALICE[:-1]), True),
    "not bearer": ({"Authorization": f"Basic {ALICE}"}, True),
    "empty bearer": ({"Authorization": "Bearer"}, True),
    "forged cookie": ({"Cookie": f"{COOKIE}=forged.value"}, True),
    "unrelated cookie": ({"Cookie": "theme=dark"}, False),
}


@pytest.mark.asyncio
async def test_a_request_without_valid_credentials_is_401_and_costs_no_query_and_no_aws_call(
    protected: Protected, aws_state: FakeAws
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cached-image")
    await cache_image(protected, aws_state, "cached-image")
    aws_state.reset_calls()

    for method, path in PROTECTED_REQUESTS:
        for name, (headers, invalid) in BAD_CREDENTIALS.items():
            with counting_sql(protected.runtime.engine) as statements:
                response = await protected.http.request(method, path, headers=headers)

            if method == "HEAD":
                assert response.status_code == 401, (method, path, name)
            else:
                # Signing in takes a bearer token only: a cookie there is no credential at all.
                assert_refused(response, invalid=invalid and not (path == "/v3/session" and "cookie" in name))
            assert statements == [], (method, path, name, statements)
    assert aws_state.total_calls() == 0
    # Nothing inside authentication ran: the outer middleware saw no caller on any of them.
    assert SeenCallers.seen[-len(PROTECTED_REQUESTS) * len(BAD_CREDENTIALS) :] == [None] * (
        len(PROTECTED_REQUESTS) * len(BAD_CREDENTIALS)
    )


@pytest.mark.asyncio
async def test_a_valid_token_reaches_every_route_and_names_the_caller(
    protected: Protected, aws_state: FakeAws
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cached-image")
    await cache_image(protected, aws_state, "cached-image")

    for path, status in [
        (DESCRIBE.format("cached-image"), 200),
        (DESCRIBE.format("cached-image") + "/history", 200),
        ("/v3/images/custom?imageStatus=PENDING", 200),
        ("/stats", 200),
        (DESCRIBE.format("1-bad-id"), 400),
    ]:
        response = await protected.http.get(path, headers=bearer(BOB))
        assert response.status_code == status, (path, response.text)
        assert SeenCallers.seen[-1] == "bob"
    # The scheme is case-insensitive (RFC 7235).
    assert (await protected.http.get("/stats", headers={"Authorization": f"bearer {ALICE}"})).status_code == 200
    assert SeenCallers.seen[-1] == "alice"


@pytest.mark.asyncio
async def test_the_open_routes_answer_without_credentials(runtime: Runtime, tokens_path: Path) -> None:
    async with protected_app(runtime, tokens_path) as protected:
        assert (await protected.http.get("/healthz")).status_code == 200
        assert (await protected.http.get("/readyz")).status_code in (200, 503)
        # Not served yet by this build, but never behind a token: the router answers, not authentication.
        for path in ("/metrics", "/openapi.json", "/", "/board/board.js"):
            assert (await protected.http.get(path)).status_code != 401, path
    async with protected_app(runtime, tokens_path, metrics_auth=True) as protected:
        assert_refused(await protected.http.get("/metrics"), invalid=False)
        assert (await protected.http.get("/metrics", headers=bearer(ALICE))).status_code != 401
        assert (await protected.http.get("/healthz")).status_code == 200


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("/healthz", True), ("/readyz", True), ("/openapi.json", True), ("/", True), ("/board/board.js", True),
        ("/metrics", True), ("/healthz/", False), ("/v3/images/custom/healthz", False), ("/stats", False),
        ("/v3/session", False), ("/staticx", False), ("//healthz", False),
    ],
)  # fmt: skip
def test_which_paths_are_open(path: str, public: bool) -> None:
    assert auth.is_public(path, protect_metrics=False) is public
    assert auth.is_public(path, protect_metrics=True) is (public and path != "/metrics")


@pytest.mark.asyncio
async def test_without_a_tokens_file_authentication_is_not_in_the_stack(runtime: Runtime, tokens_path: Path) -> None:
    def layers(app: StatusCacheApp) -> list[type]:
        found, layer = [], app.app
        while layer is not None:
            found.append(type(layer))
            layer = getattr(layer, "app", None)
        return found

    anonymous = create_app(runtime.settings, runtime=runtime)
    assert auth.Authentication not in layers(anonymous) and anonymous.tokens is None
    configured = dataclasses.replace(runtime.settings, api_tokens_file=str(tokens_path))
    assert auth.Authentication in layers(create_app(configured, runtime=runtime))


# --- the browser session ---------------------------------------------------------------------------------


async def sign_in(http: httpx.AsyncClient, token: str = ALICE) -> str:
    response = await http.post("/v3/session", headers=bearer(token))
    assert response.status_code == 204, response.text
    value = http.cookies.get(COOKIE)
    assert value
    return value


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_token_buys_a_session_cookie_that_every_protected_route_accepts(
    protected: Protected, aws_state: FakeAws
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="cached-image")
    await cache_image(protected, aws_state, "cached-image")
    response = await protected.http.post("/v3/session", headers=bearer(ALICE))

    assert response.status_code == 204 and response.content == b""
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert attribute in set_cookie.split("; ")
    assert "Secure" not in set_cookie  # plain http here; see the https test
    assert ALICE not in set_cookie
    # The cookie jar now sends it, and no Authorization header goes along.
    for path in (DESCRIBE.format("cached-image"), "/stats", DESCRIBE.format("cached-image") + "/history"):
        reply = await protected.http.get(path)
        assert reply.status_code == 200, (path, reply.text)
        assert SeenCallers.seen[-1] == "alice"

    cleared = await protected.http.delete("/v3/session")
    assert cleared.status_code == 204 and "Max-Age=0" in cleared.headers["set-cookie"]
    assert COOKIE not in protected.http.cookies
    assert_refused(await protected.http.get("/stats"), invalid=False)


@pytest.mark.asyncio
async def test_the_cookie_is_secure_over_https(runtime: Runtime, tokens_path: Path) -> None:
    configured = dataclasses.replace(runtime.settings, api_tokens_file=str(tokens_path))
    app = create_app(configured, runtime=runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://statuscache") as http:
        response = await http.post("/v3/session", headers=bearer(ALICE))
    assert response.status_code == 204
    assert "Secure" in response.headers["set-cookie"].split("; ")


@pytest.mark.asyncio
async def test_signing_in_needs_a_valid_bearer_token_and_only_post_and_delete_exist(protected: Protected) -> None:
    assert_refused(await protected.http.post("/v3/session"), invalid=False)
    assert_refused(await protected.http.post("/v3/session", headers=bearer(NOBODY)), invalid=True)
    assert COOKIE not in protected.http.cookies
    wrong = await protected.http.get("/v3/session", headers=bearer(ALICE))
    assert wrong.status_code == 405 and orjson.loads(wrong.content) == {"message": "Method Not Allowed"}
    assert wrong.headers["allow"] == "POST, DELETE"


@pytest.mark.asyncio
async def test_the_change_stream_accepts_the_session_cookie(runtime: Runtime, tokens_path: Path) -> None:
    configured = dataclasses.replace(runtime.settings, api_tokens_file=str(tokens_path))
    async with serving(create_app(configured, runtime=runtime)) as base, httpx.AsyncClient(base_url=base) as http:
        refused = await http.get("/v3/image-changes")
        assert_refused(refused, invalid=False)
        await sign_in(http)
        # What an EventSource does: a plain GET, the browser adding the cookie.
        async with http.stream("GET", "/v3/image-changes") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            assert await anext(stream.aiter_lines()) == "retry: 2000"


@pytest.mark.asyncio
async def test_a_reload_ends_the_revoked_callers_waits_for_their_clients_and_no_one_elses(
    runtime: Runtime, tokens_path: Path
) -> None:
    """A long response waiting for its client to leave (the change stream) is told "disconnected" once its caller's
    token leaves the file; its task carries on (it was the wait that was cancelled, not the request). Any other
    cancellation stays a cancellation."""
    answered: dict[str, Message] = {}

    async def held_open(scope: Scope, receive: Receive, send: Send) -> None:
        answered[scope[auth.CALLER]] = await receive()

    async def client_stays() -> Message:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: Message) -> None:
        raise AssertionError

    tokens = auth.TokenFile(str(tokens_path))
    authentication = auth.Authentication(held_open, tokens=tokens, state=AppState(runtime.settings, runtime),
                                         protect_metrics=False)  # fmt: skip

    def request(token: str) -> asyncio.Task[None]:
        scope = {"type": "http", "method": "GET", "path": "/v3/image-changes", "headers": bearer_header(token)}
        return asyncio.create_task(authentication(scope, client_stays, send))

    alice, bob = request(ALICE), request(BOB)
    for _ in range(10):
        await asyncio.sleep(0)
    assert {waiter.caller.name for waiter in authentication.waiting.values()} == {"alice", "bob"}
    await asyncio.to_thread(tokens_path.write_text, line("bob", BOB) + "\n")
    assert tokens.reload()
    await asyncio.wait_for(alice, timeout=5)
    assert answered == {"alice": {"type": "http.disconnect"}} and not alice.cancelled()
    assert not bob.done() and [waiter.caller.name for waiter in authentication.waiting.values()] == ["bob"]
    bob.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bob
    assert answered.keys() == {"alice"} and authentication.waiting == {}


@pytest.mark.asyncio
async def test_an_expired_forged_or_revoked_session_is_401_and_the_cookie_is_cleared(
    protected: Protected,
) -> None:
    http = protected.http
    key = await protected.runtime.keys.get(KEY_NAME)
    alice = Caller("alice", digest(ALICE))
    expired = Sessions(key).issue(alice, now=time.time() - 43200 - 1)
    other_deployment = Sessions(bytes(32)).issue(alice, now=time.time())
    for value, message in [(expired, auth.EXPIRED), (other_deployment, auth.INVALID), ("a.b", auth.INVALID)]:
        response = await http.get("/stats", headers={"Cookie": f"{COOKIE}={value}"})
        assert_refused(response, invalid=True)
        assert orjson.loads(response.content) == {"message": message}
        assert "Max-Age=0" in response.headers["set-cookie"]

    value = await sign_in(http, ALICE)
    assert (await http.get("/stats")).status_code == 200
    # alice's line leaves the file: after the reload her session ends with her token.
    protected.tokens_path.write_text(line("bob", BOB) + "\n")
    assert protected.app.tokens is not None and protected.app.tokens.reload()
    assert_refused(await http.get("/stats", headers={"Cookie": f"{COOKIE}={value}"}), invalid=True)
    assert_refused(await http.get("/stats", headers=bearer(ALICE)), invalid=True)
    assert (await http.get("/stats", headers=bearer(BOB))).status_code == 200


@pytest.mark.asyncio
async def test_an_explicit_bearer_token_wins_over_the_cookie(protected: Protected) -> None:
    await sign_in(protected.http, ALICE)
    assert_refused(await protected.http.get("/stats", headers=bearer(NOBODY)), invalid=True)
    assert (await protected.http.get("/stats", headers=bearer(BOB))).status_code == 200
    assert SeenCallers.seen[-1] == "bob"


@pytest.mark.asyncio
async def test_a_session_from_one_replica_is_honoured_by_another(
    runtime: Runtime, tokens_path: Path, aws_state: FakeAws
) -> None:
    other = Runtime.build(runtime.settings, engine=db.create_engine(runtime.settings), aws=Aws())
    try:
        async with protected_app(runtime, tokens_path) as first, protected_app(other, tokens_path) as second:
            value = await sign_in(first.http)
            response = await second.http.get("/stats", headers={"Cookie": f"{COOKIE}={value}"})
            assert response.status_code == 200
    finally:
        await other.close()


@pytest.mark.asyncio
async def test_a_forged_cookie_right_after_start_up_costs_no_query(
    protected: Protected, aws_state: FakeAws
) -> None:
    # The session key was read during start-up: the very first request, a forgery, asks the database nothing.
    with counting_sql(protected.runtime.engine) as statements:
        forged = Sessions(bytes(32)).issue(Caller("alice", digest(ALICE)), now=time.time())
        assert_refused(await protected.http.get("/stats", headers={"Cookie": f"{COOKIE}={forged}"}), invalid=True)
    assert statements == []


# --- logs ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_caller_is_logged_with_each_request_and_no_token_or_cookie_ever_is(
    protected: Protected, aws_state: FakeAws, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    aws_state.create_image_stack(region=REGION, image_id="logged-image")
    caplog.set_level(logging.DEBUG)
    http = protected.http

    await cache_image(protected, aws_state, "logged-image")
    await http.get("/stats", headers=bearer(BOB))
    await http.get("/stats", headers=bearer(NOBODY))
    await http.get("/stats", headers={"Authorization": f"Basic {ALICE}"})
    cookie = await sign_in(http, BOB)
    await http.get(DESCRIBE.format("logged-image"))
    await http.get(DESCRIBE.format("1-bad"), headers=bearer(ALICE))
    http.cookies.clear()
    await http.get("/stats", headers={"Cookie": f"{COOKIE}={cookie[:-2]}"})
    # A token pasted into the file by mistake, reloaded: refused, and not quoted in the error.
    protected.tokens_path.write_text(f"alice {ALICE}\n")
    assert protected.app.tokens is not None and not protected.app.tokens.reload()

    lines = [record.getMessage() for record in caplog.records]
    everything = "\n".join(lines) + "\n".join(str(record.__dict__) for record in caplog.records)
    for secret in (ALICE, BOB, NOBODY, cookie, ALICE[10:30], cookie.split(".")[1]):
        assert secret not in everything
    requests = [text for text in lines if "caller=" in text or "refused" in text]
    assert f"GET {DESCRIBE.format('logged-image')} caller=alice" in requests
    assert "GET /stats caller=bob" in requests
    assert f"GET {DESCRIBE.format('logged-image')} caller=bob" in requests  # through the session cookie
    assert "GET /stats refused: unknown token" in requests
    assert "GET /stats refused: not a bearer token" in requests
    assert "GET /stats refused: forged session" in requests
    # Every request made above left one line, and only one.
    assert len(requests) == 10, requests
