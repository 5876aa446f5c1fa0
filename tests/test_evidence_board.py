"""A build's end, sent as the event EventBridge sends, reaches a real `statuscache serve`: its evidence is kept
within seconds, answered after cleanup, and the board shows why it failed."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from service.demo.fakeaws import FakeAws
from tests.conftest import REGION
from tests.test_board_browser import ARTIFACTS, Served, browser, page_of, stack_event
from tests.test_e2e import wait_until_ready

pytestmark = pytest.mark.slow

IMAGE = "board-failing"
STREAM = "3.9.0/1"
REASON = "Document arn:aws:imagebuilder:us-east-1:123456789012:component/parallelclusterimage/3.9.0/1 failed!"


async def seconds_until_kept(http: httpx.AsyncClient, *, within: float = 30.0) -> float:
    """Seconds until /v3/image-builds says the build's evidence was kept (polled every 50 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        builds = (await http.get("/v3/image-builds", params={"imageId": IMAGE})).json()["builds"]
        if builds and builds[0]["evidenceKept"]:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError("the evidence was never kept")


@pytest.mark.asyncio
async def test_a_failed_build_is_kept_on_its_event_and_shown_after_cleanup(
    aws_state: FakeAws, tmp_path: Path
) -> None:
    stack_id = aws_state.create_image_stack(region=REGION, image_id=IMAGE, imagebuilder_status="BUILDING")
    start = int(time.time() * 1000) - 120_000
    aws_state.put_build_log(
        region=REGION, image_id=IMAGE, stream=STREAM,
        messages=[(start + i * 100, f"step {i}") for i in range(200)] + [(start + 30_000, "ERROR: yum failed")],
    )  # fmt: skip
    server = Served(aws_state, tmp_path)
    http = httpx.AsyncClient(base_url=server.base)
    try:
        wait_until_ready(server.base, process=server.process)
        # The build fails: its resource event, its stack rolled back, and the event that says so.
        aws_state.add_stack_event(
            region=REGION, stack_name=IMAGE, logical_id="ParallelClusterImage", status="CREATE_FAILED", reason=REASON
        )
        aws_state.set_stack_status(region=REGION, stack_name=IMAGE, status="ROLLBACK_COMPLETE", reason="failed")
        server.send(stack_event(stack_id, "ROLLBACK_COMPLETE", at=datetime.now(UTC)))
        delay = await seconds_until_kept(http)
        print(f"evidence kept {delay:.2f}s after the event was sent")
        assert delay < 10

        aws_state.delete_stack(region=REGION, stack_name=IMAGE)
        aws_state.delete_build_logs(region=REGION, image_id=IMAGE)
        events = await http.get(f"/v3/images/custom/{IMAGE}/stackevents", params={"region": REGION})
        assert (events.status_code, events.headers["x-cache"]) == (200, "ARCHIVE")

        async with (
            browser() as chromium,
            page_of(chromium, tmp_path=tmp_path, name="evidence", viewport={"width": 1280, "height": 900}) as page,
        ):
            await page.goto(server.base + "/#builds")
            # The failure reason opens the evidence (marked as kept).
            evidence = page.locator("#failed-builds details.evidence-toggle")
            await expect(evidence.locator("summary[data-kept]")).to_have_count(1)
            await evidence.locator("summary").click()
            await expect(evidence).to_contain_text(REASON)
            await expect(evidence).to_contain_text("ERROR: yum failed")
            await expect(evidence).to_contain_text("Kept when the build ended")
            await expect(evidence.locator("a", has_text="the whole log")).to_have_attribute(
                "href", f"/v3/images/custom/{IMAGE}/logstreams/3.9.0%2F1?region={REGION}&startFromHead=true"
            )
            await page.screenshot(path=str(Path(ARTIFACTS or tmp_path) / "board-evidence.png"), full_page=True)

            # An image's details say why it failed too.
            await page.click("#view-images")
            await page.locator(f'#rows tr[data-key="{REGION}/{IMAGE}"] .image-link').click()
            section = page.locator("#evidence")
            await expect(section).to_be_visible()
            await expect(section).to_contain_text(REASON)
            await expect(section).to_contain_text("ERROR: yum failed")
            await page.screenshot(path=str(Path(ARTIFACTS or tmp_path) / "board-evidence-details.png"))
    finally:
        await http.aclose()
        server.stop()
