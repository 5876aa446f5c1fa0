"""A SIGKILL in the middle of a burst of deliveries loses none: every completion reaches the receiver after the
restart, a duplicate keeps its webhook-id, and the serve command refuses a bad subscriptions file in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.aws import Aws
from service.demo.fakeaws import FakeAws
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from tests.conftest import REGION, free_port
from tests.test_e2e import wait_until_ready
from tests.test_notify import Receiver, image_change, listening, subscriptions_file, until, webhook

pytestmark = pytest.mark.slow

BURST = 30


@contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), "--no-poll"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process=process)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.asyncio
async def test_sigkill_mid_burst_then_restart_delivers_every_completion(
    settings: Settings, aws_state: FakeAws, tmp_path: Path
) -> None:
    if not settings.is_sqlite:
        await db.migrate(settings.database_url)
    writer = Runtime.build(settings, engine=db.create_engine(settings), aws=Aws())
    receiver = Receiver()

    async def slowed(scope: object, receive: object, send: object) -> None:
        await asyncio.sleep(0.05)  # a receiver taking its time: the burst is in flight when killed
        await receiver(scope, receive, send)

    subscriptions_file(tmp_path, "")  # writes the secret file
    try:
        await writer.cache.apply_many([image_change(f"burst-{n:02d}", "CREATE_IN_PROGRESS", minute=0)
                                       for n in range(BURST)])  # fmt: skip
        async with listening(slowed, free_port()) as url:
            path = tmp_path / "subscriptions.toml"
            hook = webhook(url, statuses='["BUILD_COMPLETE"]').replace("SECRET_FILE", str(tmp_path / "secret"))
            await asyncio.to_thread(path.write_text, hook)
            port = free_port()
            env = {
                **os.environ, "AWS_ENDPOINT_URL": aws_state.endpoint_url,
                "STATUSCACHE_DATABASE_URL": settings.database_url, "STATUSCACHE_REGIONS": REGION,
                "STATUSCACHE_SUBSCRIPTIONS_FILE": str(path),
                "STATUSCACHE_NOTIFY_POLL_SECONDS": "0.1", "STATUSCACHE_NOTIFY_RETRY_INITIAL_SECONDS": "0.1",
            }  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            with serving(env, port) as first:
                await _started(base)
                await writer.cache.apply_many([image_change(f"burst-{n:02d}", "CREATE_COMPLETE", minute=1)
                                               for n in range(BURST)])  # fmt: skip
                await until(lambda: len(receiver.got) >= 10, seconds=30)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            killed_at = len(receiver.got)
            assert killed_at < BURST, "the burst was over before the kill: nothing was tested"
            with serving(env, port):
                await until(lambda: _received(receiver) >= _all(), seconds=60)
                await asyncio.sleep(0.5)
    finally:
        await writer.close()
    received = [(message_id, item["data"]["imageId"], item["data"]["sequence"]) for message_id, item in receiver.got]
    assert {image for _, image, _ in received} == _all()
    # A duplicate (sent again after the restart) carries the same webhook-id: the receiver's idempotency key.
    ids_by_image: dict[str, set[str]] = {}
    for message_id, image, _ in received:
        ids_by_image.setdefault(image, set()).add(message_id)
    assert all(len(ids) == 1 for ids in ids_by_image.values())
    # In change order within each run of the process.
    before, after = received[:killed_at], received[killed_at:]
    assert [seq for *_, seq in before] == sorted(seq for *_, seq in before)
    assert [seq for *_, seq in after] == sorted(seq for *_, seq in after)


def _received(receiver: Receiver) -> set[str]:
    return {item["data"]["imageId"] for _, item in receiver.got}


def _all() -> set[str]:
    return {f"burst-{n:02d}" for n in range(BURST)}


async def _started(base: str) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(200):
            listed = (await http.get("/v3/subscriptions")).json()["subscriptions"]
            if listed and listed[0]["cursor"] is not None:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the subscription never started")


def test_serve_refuses_a_bad_subscriptions_file_in_one_line(tmp_path: Path, aws_state: FakeAws) -> None:
    path = tmp_path / "subscriptions.toml"
    path.write_text('[[webhook]]\nname = "ci"\nurl = "http://169.254.169.254/latest"\nsecret_file = "/nope"\n')
    env = {
        **os.environ, "AWS_ENDPOINT_URL": aws_state.endpoint_url,
        "STATUSCACHE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'refused.db'}",
        "STATUSCACHE_SUBSCRIPTIONS_FILE": str(path),
    }  # fmt: skip
    refused = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", str(free_port())], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    lines = [line for line in refused.stderr.splitlines() if "subscriptions" in line.lower()]
    assert len(lines) == 1 and f"{path}: [[webhook]] #1 ('ci'), url: 169.254.169.254 is a link-local" in lines[0]
