"""The status board's notifications panel: each subscription's health, as GET /v3/subscriptions says it."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import expect

from service.api.app import create_app
from service.runtime import Runtime
from tests.conftest import free_port, serving
from tests.test_board_browser import browser, page_of
from tests.test_notify import Receiver, apply, image_change, listening, quick, subscriptions_file, until, webhook

__all__ = ["quick"]  # the fixture, used by name


@pytest.mark.asyncio
async def test_the_board_shows_each_subscriptions_health(quick: Runtime, tmp_path: Path) -> None:
    receiver = Receiver()
    receiver.answer = lambda message_id: (503, {})
    await apply(quick, image_change("panel", "CREATE_IN_PROGRESS", minute=0))
    async with listening(receiver, free_port()) as url:
        quick.notify(subscriptions_file(tmp_path, webhook(url)))
        await until(lambda: "ci" in quick.metrics.notify_lag)
        await apply(quick, image_change("panel", "CREATE_COMPLETE", minute=1))
        await until(lambda: quick.metrics.deliveries[("ci", "failed")] >= 1)
        app = create_app(quick.settings, runtime=quick)
        async with serving(app) as base, browser() as chromium_browser, page_of(
            chromium_browser, tmp_path=tmp_path, name="board-subscriptions"
        ) as page:
            await page.goto(base + "/")
            panel = page.locator("#subscriptions")
            await expect(panel).to_be_visible(timeout=10_000)
            cells = panel.locator("tbody tr").first.locator("td")
            await expect(cells.nth(0)).to_have_text("ci")
            await expect(cells.nth(1)).to_have_text("Webhook")
            await expect(cells.nth(3)).to_have_text("0")
            await expect(cells.nth(4)).to_have_text("Retrying")
            await expect(cells.nth(5)).to_contain_text("503")
