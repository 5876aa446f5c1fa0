"""The status board in a real browser: Debian's Chromium, headless, driven by Playwright (never a downloaded browser).

The board against a real `statuscache serve` and its event queue: seeded images with their statuses, then an
event changes one and the page shows it within 2 s without a reload. Then a phone-width screen worked by
keyboard alone, and the sign-in flow a protected deployment asks for. A failing test leaves a screenshot
(its path is in the failure message).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.middleware import Middleware

from service.api.app import create_app
from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from service.runtime import Runtime
from tests.conftest import REGION, free_port, serving
from tests.test_e2e import wait_until_ready

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
# Where failure screenshots go (kept after the run); a test's own tmp_path when unset.
ARTIFACTS = os.environ.get("STATUSCACHE_TEST_ARTIFACTS")


def chromium() -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/ensure-chromium installs Debian's chromium (make test runs it)")
    return CHROMIUM


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@asynccontextmanager
async def page_of(
    browser: Browser, *, tmp_path: Path, name: str, expected_errors: str | None = None, **context: Any
) -> AsyncIterator[Page]:
    """A page whose console errors fail the test (but those containing `expected_errors`), with a screenshot of it
    taken when the test fails."""
    opened = await browser.new_context(**context)
    page = await opened.new_page()
    errors: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error" and not (expected_errors and expected_errors in message.text):
            errors.append(message.text)

    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", console)
    try:
        yield page
        assert not errors, errors
    except BaseException as exc:
        shot = Path(ARTIFACTS or tmp_path) / f"{name}-failure.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(f"{exc} (screenshot: {shot})") from exc
    finally:
        await opened.close()


def stack_event(stack_id: str, status: str, *, at: datetime) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "CloudFormation Stack Status Change",
        "source": "aws.cloudformation",
        "account": ACCOUNT_ID,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": REGION,
        "resources": [stack_id],
        "detail": {"stack-id": stack_id, "status-details": {"status": status, "status-reason": "Cancelled"}},
    }


class Served:
    """`statuscache serve` with its event queue, over a seeded fake AWS."""

    def __init__(self, aws: FakeAws, tmp_path: Path) -> None:
        self.sqs = boto3.client(
            "sqs", region_name=REGION, endpoint_url=aws.endpoint_url,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        self.queue_url: str = self.sqs.create_queue(QueueName=f"board-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'board.db'}",
            "STATUSCACHE_REGIONS": REGION,
            "STATUSCACHE_EVENTS_QUEUE_URL": self.queue_url,
            "STATUSCACHE_RESYNC_SECONDS": "3600",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def send(self, event: dict[str, Any]) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(event))

    def stop(self) -> str:
        self.process.terminate()
        try:
            output, _ = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return output.decode(errors="replace")


@pytest.fixture
def served(aws_state: FakeAws, tmp_path: Path) -> Iterator[tuple[Served, dict[str, str]]]:
    stacks = {
        "board-building": aws_state.create_image_stack(
            region=REGION, image_id="board-building", imagebuilder_status="BUILDING"
        ),
        "board-rolled-back": aws_state.create_image_stack(region=REGION, image_id="board-rolled-back"),
    }
    aws_state.set_stack_status(region=REGION, stack_name="board-rolled-back", status="ROLLBACK_COMPLETE")
    aws_state.create_ami(region=REGION, image_id="board-finished")
    server = Served(aws_state, tmp_path)
    try:
        wait_until_ready(server.base, process=server.process)
        yield server, stacks
    finally:
        server.stop()


def row(page: Page, image_id: str) -> Any:
    return page.locator(f'#rows tr[data-key="{REGION}/{image_id}"]')


@pytest.mark.asyncio
async def test_the_board_lists_the_images_and_follows_an_event_live_without_a_reload(
    served: tuple[Served, dict[str, str]], tmp_path: Path
) -> None:
    server, stacks = served
    async with browser() as chromium_browser, page_of(chromium_browser, tmp_path=tmp_path, name="board-live") as page:
        await page.goto(server.base + "/")
        await expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
        expected = {"board-building": "Building", "board-rolled-back": "Failed", "board-finished": "Complete"}
        for image_id, status in expected.items():
            await expect(row(page, image_id).locator(".badge")).to_have_text(status)
        await expect(row(page, "board-building").locator(".col-ib")).to_have_text("BUILDING")
        await expect(row(page, "board-building").locator(".col-version")).to_have_text("3.9.0")
        await expect(page.locator('#counts [data-status="BUILD_IN_PROGRESS"] .n')).to_have_text("1")
        await expect(page.locator('#counts [data-status=""] .n')).to_have_text("3")
        # A marker that a reload would wipe out.
        await page.evaluate("window.__sameDocument = true")

        sent = time.monotonic()
        server.send(stack_event(stacks["board-building"], "ROLLBACK_IN_PROGRESS", at=datetime.now(UTC)))
        await expect(row(page, "board-building").locator(".badge")).to_have_text("Failed", timeout=2_000)
        elapsed = time.monotonic() - sent

        assert elapsed < 2.0
        await expect(row(page, "board-building").locator(".col-stack")).to_have_text("ROLLBACK_IN_PROGRESS")
        await expect(page.locator('#counts [data-status="BUILD_FAILED"] .n')).to_have_text("2")
        await expect(page.locator('#counts [data-status="BUILD_IN_PROGRESS"] .n')).to_have_text("0")
        assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
        await expect(page.locator("#live")).to_have_text("Live")
        if ARTIFACTS:
            await page.screenshot(path=str(Path(ARTIFACTS) / "board.png"), full_page=True)


@pytest.mark.asyncio
async def test_filters_search_and_details_work_by_keyboard_on_a_phone(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id="phone-build", imagebuilder_status="BUILDING")
    aws_state.create_ami(region=REGION, image_id="phone-done")
    await runtime.reconciler.run_once()
    arn = aws_state.imagebuilder_arn(region=REGION, image_id="phone-build")
    aws_state.put_imagebuilder_image(arn, status="TESTING")
    await runtime.reconciler.run_once()
    assert stack_id
    app = create_app(runtime.settings, runtime=runtime)
    phone = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        page_of(chromium_browser, tmp_path=tmp_path, name="board-phone", **phone) as page,
    ):
        await page.goto(base + "/")
        await expect(page.locator("#rows tr")).to_have_count(2)
        # Nothing wider than the screen; the stack and Image Builder columns give way.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        assert not await page.locator("#rows .col-stack").first.is_visible()

        # "/" jumps to the search; typing narrows the list.
        await page.keyboard.press("/")
        assert await page.evaluate("document.activeElement.id") == "search"
        await page.keyboard.type("done")
        await expect(page.locator("#rows tr")).to_have_count(1)
        await page.keyboard.press("Control+A")
        await page.keyboard.press("Backspace")
        await expect(page.locator("#rows tr")).to_have_count(2)

        # A status chip filters, by keyboard.
        await page.locator('#counts [data-status="BUILD_IN_PROGRESS"]').focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#rows tr")).to_have_count(1)
        chip = page.locator('#counts [data-status="BUILD_IN_PROGRESS"]')
        await expect(chip).to_have_attribute("aria-pressed", "true")

        # Tab to the image, Enter opens its details: the timeline and the describe document.
        await page.locator(".image-link").first.focus()
        await page.keyboard.press("Enter")
        dialog = page.locator("#details")
        await expect(dialog).to_be_visible()
        await expect(page.locator("#details-title")).to_have_text("phone-build")
        bars = page.locator("#timeline svg rect")
        await expect(bars.first).to_be_visible()
        # Build, stack and Image Builder lanes; Image Builder went BUILDING then TESTING.
        assert await bars.count() >= 4
        document = json.loads(await page.locator("#document").text_content() or "{}")
        assert document["imageId"] == "phone-build" and document["imagebuilderImageStatus"] == "TESTING"
        await page.keyboard.press("Escape")
        await expect(dialog).to_be_hidden()


TOKEN = "board-test-token"
COOKIE = "statuscache_session"


class TokenRequired:
    """The authentication contract as the board sees it: 401 without a session; POST /v3/session with the bearer
    token sets the session cookie; the page and its files need none."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode(): value.decode() for key, value in scope["headers"]}
        if scope["path"] == "/v3/session" and scope["method"] == "POST":
            if headers.get("authorization") == f"Bearer {TOKEN}":
                cookie = f"{COOKIE}=ok; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"
                headers_out = [(b"set-cookie", cookie.encode())]
                await send({"type": "http.response.start", "status": 204, "headers": headers_out})
                await send({"type": "http.response.body", "body": b""})
            else:
                await self._unauthorized(send)
            return
        public = scope["path"] == "/" or scope["path"].startswith("/board/")
        if not public and f"{COOKIE}=ok" not in headers.get("cookie", ""):
            await self._unauthorized(send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized(send: Any) -> None:
        body = b'{"message":"Authentication required: a bearer token or a session."}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.mark.asyncio
async def test_a_protected_service_asks_for_a_token_once_then_the_board_works(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    aws_state.create_ami(region=REGION, image_id="behind-auth")
    await runtime.reconciler.run_once()
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(TokenRequired)])
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        # The browser reports each 401 the board answers with the token form.
        page_of(chromium_browser, tmp_path=tmp_path, name="board-auth", expected_errors="401 (Unauthorized)") as page,
    ):
        await page.goto(base + "/")
        login = page.locator("#login")
        await expect(login).to_be_visible()
        await page.fill("#token", "wrong")
        await page.keyboard.press("Enter")
        await expect(page.locator("#login-error")).to_contain_text("Authentication required")

        await page.fill("#token", TOKEN)
        await page.keyboard.press("Enter")
        await expect(login).to_be_hidden()
        await expect(row(page, "behind-auth").locator(".badge")).to_have_text("Complete")
        await expect(page.locator("#live")).to_have_text("Live", timeout=10_000)
        cookies = await page.context.cookies()
        assert [cookie["name"] for cookie in cookies] == [COOKIE] and cookies[0]["httpOnly"]


def test_chromium_is_debians_and_playwright_downloaded_no_browser() -> None:
    assert Path(CHROMIUM).exists(), "scripts/ensure-chromium installs it"
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Chromium" in version
    # Playwright's own browser store stays empty: the tests use executable_path.
    store = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", Path.home() / ".cache" / "ms-playwright"))
    assert not store.exists() or not any(store.glob("chromium*")), f"a downloaded browser in {store}"
    assert shutil.which("chromium") == CHROMIUM
