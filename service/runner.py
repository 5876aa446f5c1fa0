"""What each CLI command runs: serve (API + poller), poll, sync, migrate. Never the demo: see service.demo."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
from collections.abc import Coroutine, Sequence
from types import FrameType
from typing import Any

import botocore.exceptions
import botocore.session
import uvicorn

from service.api.app import create_app
from service.api.state import AppState
from service.errors import ConfigurationError
from service.runtime import Runtime
from service.settings import Settings
from service.store import db

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # botocore and aiobotocore are chatty below WARNING.
    for noisy in ("botocore", "aiobotocore", "urllib3", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


NO_AWS = (
    "no AWS credentials and no AWS endpoint: botocore found no credentials in the environment "
    "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), in the shared files ~/.aws/credentials and "
    "~/.aws/config, or from a container or instance role, and AWS_ENDPOINT_URL is not set; configure one of "
    "them, or run `statuscache demo` to try the service against a local fake AWS"
)


def aws_configured() -> bool:
    """An endpoint is set, or botocore finds credentials the way the service's own clients will look."""
    if any(name.startswith("AWS_ENDPOINT_URL") and value for name, value in os.environ.items()):
        return True
    return botocore.session.get_session().get_credentials() is not None


def require_aws() -> None:
    """Refuse to start without AWS to ask: serving then could only mean errors, or invented data.

    Called before anything starts (database, loops, HTTP), so the failure is one line and exit code 2.
    """
    try:
        configured = aws_configured()
    except botocore.exceptions.BotoCoreError as exc:
        # A profile that does not exist, a malformed ~/.aws/config: the same refusal, botocore's words.
        raise ConfigurationError(f"AWS configuration: {exc}") from exc
    if not configured:
        raise ConfigurationError(NO_AWS)


def serve(settings: Settings) -> None:
    require_aws()
    serve_app(settings)


def serve_app(settings: Settings, *, background: Sequence[Coroutine[Any, Any, None]] = ()) -> None:
    """Run uvicorn the way `uvicorn` itself does (its event loop and HTTP implementation choices).

    `background` runs beside the loops for the life of the app (the demo's scenario); `serve` has none.
    """
    poll = not settings.no_poll
    app = create_app(settings, open_runtime=lambda s: Runtime.open(s, poll=poll, background=list(background)))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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
    require_aws()
    async with Runtime.open(settings, poll=True):
        await _until_signalled()


async def sync_once(settings: Settings) -> int:
    require_aws()
    async with Runtime.open(settings, poll=False, heal=False) as runtime:
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
