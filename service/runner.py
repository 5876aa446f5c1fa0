"""What each CLI command runs: serve (API + poller), poll, sync, migrate. Never the demo: see service.demo."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import Any

import botocore.exceptions
import botocore.session
import uvicorn
from starlette.types import ASGIApp

from service.api import connections
from service.api.app import create_app
from service.api.state import AppState
from service.api.tokens import TokenFile
from service.errors import REFUSALS, ConfigurationError, StartupFailed, StatusCacheError
from service.notify.config import SubscriptionsFile
from service.runtime import Runtime
from service.settings import Settings
from service.store import db
from service.support import logs
from service.support.loops import Backoff
from service.support.workers import Outcome, Report, Supervisor, Worker

log = logging.getLogger(__name__)


def configure_logging(level: str, kind: str = "text") -> None:
    """One handler on the root logger, text or JSON (STATUSCACHE_LOG_FORMAT); uvicorn's lines go through it too."""
    handler = logging.StreamHandler()
    handler.setFormatter(logs.formatter(kind))
    logging.basicConfig(level=level, handlers=[handler], force=True)
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


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the service to this machine. A name other than localhost is not
    resolved: it counts as reachable from elsewhere, the safe side of a guess."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def unprotected(host: str) -> str:
    return (
        f"refusing to serve on {host} without authentication: anyone who can reach it could read the cache and get "
        "S3 URLs pre-signed with this service's AWS credentials; set STATUSCACHE_API_TOKENS_FILE to a tokens file "
        "(`statuscache token create NAME` makes a token and its line), or set STATUSCACHE_ALLOW_ANONYMOUS=1 to "
        "serve anonymously on purpose"
    )


def require_protection(settings: Settings) -> None:
    """Protected mode: beyond loopback, serve only with tokens, or when told to be anonymous in so many words."""
    if not (settings.api_tokens_file or is_loopback(settings.host) or settings.allow_anonymous):
        raise ConfigurationError(unprotected(settings.host))


def serve(settings: Settings) -> int:
    """`serve`: one process, or with STATUSCACHE_WORKERS (--workers) above 1, that many on one port. The exit status."""
    require_protection(settings)
    require_aws()
    if settings.workers > 1:
        return serve_workers(settings)
    serve_app(settings)
    return 0


def warn_if_anonymous(settings: Settings) -> None:
    require_protection(settings)
    if not settings.api_tokens_file and not is_loopback(settings.host):
        log.warning(
            "serving anonymously on %s (STATUSCACHE_ALLOW_ANONYMOUS=1): anyone who can reach it can read the cache",
            settings.host,
        )


def serve_app(settings: Settings, *, background: Sequence[Coroutine[Any, Any, None]] = ()) -> None:
    """Run uvicorn the way `uvicorn` itself does (its event loop and HTTP implementation choices).

    `background` runs beside the loops for the life of the app (the demo's scenario); `serve` has none.
    """
    warn_if_anonymous(settings)
    poll = not settings.no_poll
    subscriptions = load_subscriptions(settings)
    app = create_app(
        settings,
        open_runtime=lambda s: Runtime.open(s, poll=poll, background=list(background), subscriptions=subscriptions),
    )
    # The database's mistakes said in one line here; inside uvicorn's lifespan they would be a traceback.
    asyncio.run(db.preflight(settings))
    server = DrainingServer(uvicorn_config(app, settings), app.state, tokens=app.tokens, subscriptions=subscriptions)
    server.run()
    if not server.started:
        # uvicorn logged why (a failed lifespan); a start that failed is not a clean exit.
        raise StartupFailed("the service did not start (see the lines above)")


def serve_workers(settings: Settings) -> int:
    """`serve --workers N`: N processes accepting on one socket (service.support.workers), one of them, elected by
    the poller lease, doing the background work; every one serves the API, its change stream and /metrics with
    all workers' counters. The exit status: 0 once every worker drained after SIGTERM.

    Everything an operator can get wrong is checked here, before any worker starts, and said in one line: the
    files, the database (SQLite is migrated here, once, not by N workers at once) and the address. A worker that
    still refuses to start stops the others, and its line is this process's last.
    """
    warn_if_anonymous(settings)
    load_subscriptions(settings)
    if settings.api_tokens_file:
        TokenFile(settings.api_tokens_file)
    asyncio.run(db.preflight(settings))
    listener = listen(settings)
    log.info("serving on http://%s:%d with %d workers", settings.host, settings.port, settings.workers)
    supervisor = Supervisor(
        count=settings.workers,
        target=lambda worker, report: serve_worker(settings, listener=listener, worker=worker, report=report),
        drain_seconds=settings.shutdown_seconds,
        backoff=Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds),
        reloads=bool(settings.api_tokens_file or settings.subscriptions_file),
    )
    with listener:
        outcome = supervisor.run()
    if outcome.failed_worker is not None:
        raise worker_refusal(outcome)
    return outcome.status


# uvicorn's default: connections the kernel queues while every worker is busy (or still starting).
BACKLOG = 2048


def listen(settings: Settings) -> socket.socket:
    """The socket every worker accepts on, listening before any of them starts (StartupFailed: the address)."""
    host = settings.host.removeprefix("[").removesuffix("]")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, settings.port))
        listener.listen(BACKLOG)
    except OSError as exc:
        listener.close()
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        raise StartupFailed(f"cannot listen on {settings.host}:{settings.port}: {reason}") from exc
    return listener


def serve_worker(settings: Settings, *, listener: socket.socket, worker: Worker, report: Report) -> int:
    """One worker of `serve --workers`, in its own process: the app on the shared socket until SIGTERM.

    A refusal (the files or the database, changed since the parent's checks) is reported to the parent, which says
    it as its last line; the worker's own exit status is then its parent's business.
    """
    logs.add_fields(worker=worker.number)
    try:
        subscriptions = load_subscriptions(settings)
        app = create_app(
            settings,
            open_runtime=lambda s: Runtime.open(
                s, poll=not settings.no_poll, subscriptions=subscriptions, worker=worker
            ),
        )
        server = DrainingServer(
            uvicorn_config(app, settings), app.state, tokens=app.tokens, subscriptions=subscriptions,
            on_started=report.ready,
        )  # fmt: skip
        server.run(sockets=[listener])
    except REFUSALS as exc:
        log.debug("worker %d refused to start", worker.number, exc_info=exc)
        report.refused(f"{type(exc).__name__} {exc}")
        return 1
    return 0


def worker_refusal(outcome: Outcome) -> StatusCacheError:
    """The error a failed start of `serve --workers` ends with: the worker's own refusal (its line and so its exit
    status, as a single process would have said it), else StartupFailed naming the worker and how it ended."""
    kind, _, message = (outcome.refusal or "").partition(" ")
    refusal = next((error for error in REFUSALS if error.__name__ == kind), None)
    if refusal is not None:
        return refusal(message)
    return StartupFailed(f"worker {outcome.failed_worker} did not start ({outcome.ended}; see the lines above)")


def load_subscriptions(settings: Settings) -> SubscriptionsFile | None:
    """The subscriptions file, read and checked before anything starts (ConfigurationError: refuse to start)."""
    if not settings.subscriptions_file:
        return None
    return SubscriptionsFile(settings.subscriptions_file, served_regions=settings.regions)


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the service: its listen address, and bounds on what a request may send."""
    proxies = trusted_proxies(settings)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,
        # uvicorn's own lines go to the root logger's handler (configure_logging): JSON when asked for.
        log_config=None,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_seconds)),
        # httptools (uvicorn's choice when installed, and ours) has no limits of its own: see service.api.connections.
        http=connections.bounded_protocol(
            max_request_line_bytes=settings.max_request_line_bytes, max_header_bytes=settings.max_header_bytes
        ),
        # The same bound if uvicorn is ever run with h11 instead (`--http h11`).
        h11_max_incomplete_event_size=settings.max_request_line_bytes + settings.max_header_bytes,
        # X-Forwarded-For believed only from the proxies named; none named, no middleware for it.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
    )


def trusted_proxies(settings: Settings) -> str:
    """STATUSCACHE_FORWARDED_ALLOW_IPS, else uvicorn's own FORWARDED_ALLOW_IPS; empty: no proxy is trusted."""
    return settings.forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS", "").strip()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the runtime the moment a stop signal arrives (before uvicorn's own drain).

    uvicorn closes idle connections and waits for busy ones; the runtime meanwhile answers /readyz with
    503, ends change streams (otherwise uvicorn would wait for their clients to leave) and lets the event
    batch in hand finish. A SIGTERM that drained cleanly exits 0: it is how an orchestrator asks to stop.

    With a tokens file, SIGHUP re-reads it in place: connections, streams and sessions of callers still
    in the file carry on; a file that cannot be read keeps the tokens already loaded. The subscriptions
    file likewise: a file that is refused keeps the subscriptions in force.
    """

    def __init__(
        self, config: uvicorn.Config, state: AppState, *, tokens: TokenFile | None = None,
        subscriptions: SubscriptionsFile | None = None, on_started: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """`on_started`: called once the app has started and the server accepts (a worker tells its parent)."""
        super().__init__(config)
        self._state = state
        self._tokens = tokens
        self._subscriptions = subscriptions
        self._on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        # Only with a file to re-read: otherwise SIGHUP keeps its usual meaning (the terminal went away: stop).
        reloads = self._tokens is not None or self._subscriptions is not None
        if reloads:
            self._loop.add_signal_handler(signal.SIGHUP, self.reload_files)
        # Connections that never finish their headers are closed by this sweeper (uvicorn has no such timeout).
        stop = asyncio.Event()
        sweeper = asyncio.create_task(
            connections.sweep_slow_headers(
                self.server_state.connections, header_seconds=self._state.settings.header_timeout_seconds, stop=stop
            )
        )
        try:
            await super().serve(sockets)
        finally:
            stop.set()
            await sweeper
            if reloads:
                self._loop.remove_signal_handler(signal.SIGHUP)

    def reload_files(self) -> None:
        if self._tokens is not None:
            self.reload_tokens()
        if self._subscriptions is not None:
            self._subscriptions.reload()

    def reload_tokens(self) -> None:
        assert self._tokens is not None
        reloaded = self._tokens.reload()
        runtime = self._state.opened
        if runtime is not None:
            runtime.metrics.token_reloads["ok" if reloaded else "failed"] += 1

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after its shutdown; a drained SIGTERM is a normal exit (however many
            # came: a worker's parent and a `kill` of the whole process group may both send one).
            self._captured_signals = [captured for captured in self._captured_signals if captured != sig]
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
    subscriptions = load_subscriptions(settings)
    async with Runtime.open(settings, poll=True, subscriptions=subscriptions):
        if subscriptions is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, subscriptions.reload)
        await _until_signalled()


async def sync_once(settings: Settings) -> int:
    require_aws()
    async with Runtime.open(settings, poll=False, recheck=False) as runtime:
        reports = await runtime.reconciler.run_once()
    for report in reports:
        print(
            f"region {report.region}: {report.images_seen} images seen, {report.aws_calls} AWS calls, "
            f"{report.changed} changed, {report.transitions} transitions, {report.gone} gone"
        )
    return 0


async def migrate(settings: Settings) -> None:
    async with db.explained(settings.database_url):
        db.check_sqlite_location(settings.database_url)
        await db.migrate(settings.database_url)
    log.info("database at revision %s", db.head_revision())
