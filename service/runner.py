"""What each CLI command runs: serve (API + poller), poll, sync, migrate, and the embedded demo."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from collections.abc import Coroutine
from types import FrameType
from typing import Any

import botocore.session
import uvicorn

from service.api.app import create_app
from service.api.state import AppState
from service.runtime import Runtime
from service.settings import Settings
from service.store import db

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore and aiobotocore are chatty below WARNING.
    for noisy in ("botocore", "aiobotocore", "urllib3", "werkzeug", "moto", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def aws_configured(env: dict[str, str] | None = None) -> bool:
    """Credentials or an endpoint exist: then the service talks to that AWS, otherwise it runs the demo."""
    env = dict(os.environ) if env is None else env
    if any(name.startswith("AWS_ENDPOINT_URL") for name in env):
        return True
    return botocore.session.get_session().get_credentials() is not None


def start_demo(settings: Settings) -> tuple[Settings, list[Coroutine[Any, Any, None]]]:
    """Start the local moto-backed AWS in-process, seed it, and point this process's botocore at it."""
    from service.demo import scenario as demo
    from service.demo.fakeaws import FakeAws

    fake = FakeAws()
    fake.start()
    os.environ["AWS_ENDPOINT_URL"] = fake.endpoint_url
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ["AWS_DEFAULT_REGION"] = demo.DEMO_REGION
    image_ids = demo.seed(fake, region=demo.DEMO_REGION)
    queue_url = demo.create_queue(fake, region=demo.DEMO_REGION)
    # The scenario sends each step's EventBridge event to this queue, and the service consumes it.
    overrides: dict[str, Any] = {"regions": (demo.DEMO_REGION,), "events_queue_urls": (queue_url,)}
    if "STATUSCACHE_RESYNC_SECONDS" not in os.environ:
        # Events bring the changes; reconciliation heals what they miss, often enough to watch it.
        overrides["resync_seconds"] = 30.0
    log.warning(
        "DEMO MODE: no AWS credentials or endpoint configured, so this is a local demo against an "
        "in-process moto server at %s with images %s. Set AWS credentials to run against AWS.",
        fake.endpoint_url, ", ".join(image_ids),
    )
    publish = demo.sqs_publisher(fake, queue_url=queue_url, region=demo.DEMO_REGION)
    return settings.with_overrides(**overrides), [demo.run_scenario(fake, stop=asyncio.Event(), publish=publish)]


def serve(settings: Settings, *, host: str, port: int, poll: bool) -> None:
    """Run uvicorn the way `uvicorn` itself does (its event loop and HTTP implementation choices)."""
    background: list[Coroutine[Any, Any, None]] = []
    if settings.demo or not aws_configured():
        settings, background = start_demo(settings)
        from service.demo import scenario as demo

        for line in demo.curl_examples(base_url=f"http://{host}:{port}"):
            log.warning("try: %s", line)
    app = create_app(settings, open_runtime=lambda s: Runtime.open(s, poll=poll, background=background))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_seconds)),
    )
    DrainingServer(config, app.state).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the runtime the moment a stop signal arrives (before uvicorn's own drain).

    uvicorn closes idle connections and waits for busy ones; the runtime meanwhile answers /readyz with
    503, ends change streams (otherwise uvicorn would wait for their clients to leave) and lets the event
    batch in hand finish. A SIGTERM that drained cleanly exits 0: it is how an orchestrator asks to stop.
    """

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after its shutdown; a drained SIGTERM is a normal exit.
            self._captured_signals.remove(sig)
        runtime = self._state.opened
        if runtime is not None and self._loop is not None:
            # A signal handler runs between two bytecodes of the loop's thread: hand over to the loop.
            self._loop.call_soon_threadsafe(runtime.begin_shutdown)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def poll(settings: Settings) -> None:
    async with Runtime.open(settings, poll=True):
        await _until_signalled()


async def sync_once(settings: Settings) -> int:
    async with Runtime.open(settings, poll=False) as runtime:
        reports = await runtime.reconciler.run_once()
    for report in reports:
        print(
            f"region {report.region}: {report.images_seen} images seen, {report.aws_calls} AWS calls, "
            f"{report.changed} changed, {report.transitions} transitions, {report.gone} gone"
        )
    return 0


async def migrate(settings: Settings) -> None:
    await db.migrate(settings.database_url)
    log.info("database at revision %s", db.head_revision())
