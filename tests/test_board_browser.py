"""The status board in a real browser: Debian's Chromium, headless, driven by Playwright (never a downloaded browser).

The board against a real `statuscache serve` and its event queue: seeded images with their statuses, then an
event changes one and the page shows it within 2 s without a reload. Then a phone-width screen worked by
keyboard alone, the sign-in flow a protected deployment asks for, and the Builds view over a scripted history
whose truth is known. A failing test leaves a screenshot (its path is in the failure message).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect
from sqlalchemy import delete
from starlette.middleware import Middleware

from service.api.app import create_app
from service.demo.fakeaws import ACCOUNT_ID, FakeAws
from service.runtime import Runtime
from service.store.tables import region_listings
from tests.conftest import OTHER_REGION, REGION, free_port, serving
from tests.fleet_script import at, fleet, ib_failure
from tests.test_e2e import wait_until_ready

pytestmark = [pytest.mark.slow, pytest.mark.browser]

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
async def test_a_region_not_yet_listed_says_so_until_its_first_pass(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    """Not "0 images": the fleet of a region no pass has listed is unknown; the board asks again until it is."""
    async with runtime.engine.begin() as connection:
        await connection.execute(delete(region_listings))
    aws_state.create_ami(region=REGION, image_id="listed-at-last")
    app = create_app(runtime.settings, runtime=runtime)
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        page_of(chromium_browser, tmp_path=tmp_path, name="board-not-yet-listed") as page,
    ):
        await page.goto(base + "/")
        await expect(page.locator("#summary")).to_have_text(f"{REGION}, {OTHER_REGION}: not yet listed.")
        await expect(page.locator("#empty")).to_be_hidden()
        await runtime.reconciler.run_once()
        await expect(page.locator("#summary")).to_have_text("1 of 1 images.", timeout=10_000)
        await expect(row(page, "listed-at-last").locator(".badge")).to_have_text("Complete")


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


def shown_minutes(minutes: float) -> str:
    """A duration as the board prints it (these are whole minutes)."""
    whole = int(minutes)
    return f"{whole // 60}h {whole % 60:02d}m" if whole >= 60 else f"{whole}m"


async def table_rows(page: Page, table: str) -> list[list[str]]:
    rows: list[list[str]] = await page.locator(f"#{table} tbody tr").evaluate_all(
        "rows => rows.map(row => [...row.cells].map(cell => cell.innerText.trim()))"
    )
    return rows


@pytest.mark.asyncio
async def test_the_builds_view_shows_a_windows_durations_failures_and_versions(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    script, truth = fleet()
    await script.apply(runtime)  # the changes through the real cache, then the builds derived from them
    finished = [t for t in truth if t.outcome in ("complete", "failed")]
    failed = sorted((t for t in truth if t.outcome == "failed"), key=lambda t: t.start, reverse=True)
    app = create_app(runtime.settings, runtime=runtime)
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        # The one answer made to fail below is reported by the browser.
        page_of(
            chromium_browser, tmp_path=tmp_path, name="board-builds", expected_errors="503 (Service Unavailable)",
            viewport={"width": 1280, "height": 900},
        ) as page,
    ):
        await page.goto(base + "/")
        # The images stay the default view.
        await expect(page.locator("#rows tr").first).to_be_visible()
        await expect(page.locator("#builds")).to_be_hidden()
        await expect(page.locator("#view-images")).to_have_attribute("aria-current", "page")

        await page.click("#view-builds")
        # The default window, the last 7 days: the scripted builds are two to four weeks old.
        empty = page.locator("#builds-empty")
        await expect(empty).to_have_text(f"No builds started in the last 7 days in {REGION}.")
        await expect(page.locator("#builds-content")).to_be_hidden()
        await expect(page.locator("#images-view")).to_be_hidden()
        await expect(page.locator("#view-builds")).to_have_attribute("aria-current", "page")
        assert page.url.endswith("#builds")

        await page.select_option("#builds-window", "30d")
        points = page.locator("#builds-chart circle.point")
        await expect(points).to_have_count(len(finished))
        await expect(empty).to_be_hidden()
        assert page.url.endswith("#builds/30d")
        await expect(page.locator("#builds-chart circle.point.failed")).to_have_count(2)
        await expect(page.locator("#builds-chart circle.point.complete")).to_have_count(4)
        # echo's end was seen by reconciliation only: drawn as an approximate duration.
        await expect(page.locator("#builds-chart circle.point.approximate")).to_have_count(1)
        titles = await page.locator("#builds-chart g > title").all_text_contents()
        assert sorted(title.split(" ")[0] for title in titles) == sorted(t.image_id for t in finished)
        red = await page.locator("#builds-chart circle.point.failed").first.evaluate("c => getComputedStyle(c).fill")
        assert red == "rgb(198, 40, 40)"
        # The longest build (bravo, 70 minutes) is the highest point.
        heights = await points.evaluate_all(
            "cs => cs.map(c => [c.previousSibling.textContent.split(' ')[0], Number(c.getAttribute('cy'))])"
        )
        assert min(heights, key=lambda pair: pair[1])[0] == "bravo"
        await expect(page.locator("#builds-summary")).to_have_text(
            f"8 builds started in the last 30 days in {REGION}: 4 complete, 2 failed, 1 deleted, 1 in progress. "
            "Success rate 66.7%."
        )

        # The failure reasons (ids made alike, so both failures count as one reason) and the failed builds.
        reason = (
            "Image Build failed: Workflow Execution ID: 'wf-<id>' failed with reason: Step 'Build' failed. "
            "SSM execution '<id>' failed"
        )
        await expect(page.locator("#failure-reasons tbody tr")).to_have_count(1)
        await expect(page.locator("#failure-reasons tbody td.num")).to_have_text("2")
        await expect(page.locator("#failure-reasons tbody .reason > span")).to_have_text(reason)
        assert await table_rows(page, "failed-builds") == [
            [
                t.image_id, t.version, at(t.start).strftime("%Y-%m-%d %H:%M UTC"),
                shown_minutes((t.end or 0) - t.start), t.imagebuilder_reason or "",
            ]
            for t in failed
        ]
        assert failed[0].imagebuilder_reason == ib_failure("0b6a2d1e-7c3f-4a59-9e8d-1f2a3b4c5d6e")

        # Per version: the counts and success rate, and the complete builds' p50/p90.
        assert await table_rows(page, "builds-versions") == [
            ["3.9.0", "4", "3", "0", "1", "0", "100%"],
            ["3.10.0", "4", "1", "2", "0", "1", "33.3%"],
        ]
        assert await table_rows(page, "builds-percentiles") == [
            ["3.9.0", "3", "1h 02m", "1h 10m", "1h 10m"],
            ["3.10.0", "1", "58m", "58m", "58m"],
        ]
        if ARTIFACTS:
            await page.screenshot(path=str(Path(ARTIFACTS) / "board-builds.png"), full_page=True)

        # The board's other region has no builds, and says so.
        await page.select_option("#builds-region", OTHER_REGION)
        await expect(empty).to_have_text(f"No builds started in the last 30 days in {OTHER_REGION}.")
        await expect(page.locator("#builds-content")).to_be_hidden()
        await page.select_option("#builds-region", REGION)
        await expect(points).to_have_count(len(finished))

        # Back to the images, unchanged; the browser's Back button returns to the builds of the window chosen.
        await page.click("#view-images")
        await expect(page.locator("#builds")).to_be_hidden()
        await expect(page.locator("#rows tr").first).to_be_visible()
        await page.go_back()
        await expect(page.locator("#builds")).to_be_visible()
        await expect(page.locator("#builds-window")).to_have_value("30d")
        await expect(points).to_have_count(len(finished))

        # An answer that fails is said on the page, not left blank.
        await page.route(
            "**/v3/image-builds/summary?*",
            lambda route: route.fulfill(
                status=503, content_type="application/json", body='{"message": "The database is unavailable."}'
            ),
        )
        await page.select_option("#builds-window", "90d")
        await expect(page.locator("#builds-problem")).to_have_text(
            "Could not load the builds: The database is unavailable."
        )
        await expect(page.locator("#builds-content")).to_be_hidden()


@pytest.mark.asyncio
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the API's answers are scripted here
async def test_the_builds_view_follows_every_page_up_to_its_cap_and_says_so(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    """7,000 builds in the window: the board follows nextToken page by page, stops at 5,000, says so."""
    total, start = 7000, datetime.now(UTC) - timedelta(days=6)
    asked: list[dict[str, list[str]]] = []

    def page_of_builds(route: Route) -> Any:
        query = parse_qs(urlsplit(route.request.url).query)
        asked.append(query)
        first = int(query.get("nextToken", ["0"])[0])
        count = min(int(query["limit"][0]), total - first)
        builds = [
            {
                "imageId": f"img-{number}", "region": REGION, "version": "3.13.0",
                "outcome": "failed" if number % 10 == 0 else "complete",
                "startTime": (start + timedelta(seconds=60 * number)).isoformat().replace("+00:00", "Z"),
                "startExact": True, "durationSeconds": 1800.0 + number, "endExact": True, "phases": {},
            }
            for number in range(first, first + count)
        ]
        body: dict[str, Any] = {"region": REGION, "builds": builds, "horizon": "2020-01-01T00:00:00.000Z"}
        if first + count < total:
            body["nextToken"] = str(first + count)
        return route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    summary = {
        "region": REGION, "since": start.isoformat(), "groupBy": "version", "horizon": "2020-01-01T00:00:00.000Z",
        "groups": [{"key": "3.13.0", "builds": total, "complete": 6300, "failed": 700, "deleted": 0,
                    "inProgress": 0, "successRate": 0.9, "durationSeconds": {"p50": 5300.0, "p90": 8100.0,
                                                                             "max": 8799.0}}],
        "failureReasons": [{"reason": "<script>alert(1)</script>", "count": 700, "example": "<b>boom</b>"}],
    }
    app = create_app(runtime.settings, runtime=runtime)
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        page_of(chromium_browser, tmp_path=tmp_path, name="board-builds-cap") as page,
    ):
        await page.route("**/v3/image-builds?*", page_of_builds)
        await page.route(
            "**/v3/image-builds/summary?*",
            lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(summary)),
        )
        await page.goto(base + "/#builds")
        await expect(page.locator("#builds-chart circle.point")).to_have_count(5000, timeout=15_000)
        await expect(page.locator("#builds-note")).to_have_text(
            "Showing the first 5,000 builds (the newest) of 7,000: the chart and the failed builds cover those, "
            "the tables count them all."
        )
        # API text is text: the "reason" is shown as written, and no element was made of it.
        await expect(page.locator("#failure-reasons tbody .reason > span")).to_have_text("<script>alert(1)</script>")
        assert await page.locator("#builds script, #builds b").count() == 0
        await expect(page.locator("#failed-builds tbody tr")).to_have_count(200)
        await expect(page.locator("#failed-builds-note")).to_have_text("Showing the newest 200 of 500.")
    assert [query.get("nextToken", [""])[0] for query in asked] == ["", "1000", "2000", "3000", "4000"]
    assert {query["limit"][0] for query in asked} == {"1000"}
    assert {query["order"][0] for query in asked} == {"desc"}
    assert len({query["since"][0] for query in asked}) == 1  # one window, the same on every page


@pytest.mark.asyncio
async def test_the_builds_view_linked_to_on_a_protected_service_asks_for_the_token_once(
    runtime: Runtime, aws_state: FakeAws, tmp_path: Path
) -> None:
    app = create_app(runtime.settings, runtime=runtime, middleware=[Middleware(TokenRequired)])
    async with (
        serving(app) as base,
        browser() as chromium_browser,
        page_of(
            chromium_browser, tmp_path=tmp_path, name="board-builds-auth", expected_errors="401 (Unauthorized)"
        ) as page,
    ):
        # Opened straight at the builds: the images and the builds are both refused, one token form is shown.
        await page.goto(base + "/#builds/24h")
        login = page.locator("#login")
        await expect(login).to_be_visible()
        await expect(page.locator("#builds-empty")).to_be_hidden()
        await page.fill("#token", TOKEN)
        await page.keyboard.press("Enter")
        await expect(login).to_be_hidden()
        await expect(page.locator("#builds-empty")).to_have_text(f"No builds started in the last 24 hours in {REGION}.")
        await expect(page.locator("#builds-window")).to_have_value("24h")
        await expect(page.locator("#builds-problem")).to_be_hidden()


def test_chromium_is_debians_and_playwright_downloaded_no_browser() -> None:
    assert Path(CHROMIUM).exists(), "scripts/ensure-chromium installs it"
    version = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=True).stdout
    assert "Chromium" in version
    # Playwright's own browser store stays empty: the tests use executable_path.
    store = Path(os.environ.get("PLAYWRIGHT_BROWSERS_PATH", Path.home() / ".cache" / "ms-playwright"))
    assert not store.exists() or not any(store.glob("chromium*")), f"a downloaded browser in {store}"
    assert shutil.which("chromium") == CHROMIUM
