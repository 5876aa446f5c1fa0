"""One typed Settings object, built once from the environment (and CLI overrides) and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from service.domain.models import REGION_PATTERN
from service.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./statuscache.db"
FALLBACK_REGION = "us-east-1"


@dataclass(frozen=True)
class Settings:
    """Every knob, with its documented default. Environment names are STATUSCACHE_<NAME upper-cased>."""

    # Where the cache lives; SQLite is the embedded default, PostgreSQL for several replicas.
    database_url: str = DEFAULT_DATABASE_URL
    # Regions served; the first one answers requests that name no region.
    regions: tuple[str, ...] = (FALLBACK_REGION,)
    # Seconds between reconciliation passes per region (one also runs at start).
    resync_seconds: float = 300.0
    # Seconds a "no such image" answer is remembered, so unknown ids cannot flood AWS.
    negative_ttl_seconds: float = 30.0
    log_level: str = "INFO"
    # Live lookups (cache misses) allowed per second per region; past it the answer is 429.
    live_lookups_per_second: float = 20.0
    # Seconds a record read from SQL may be served again from memory; bounds how late a change made by
    # another replica is seen (changes made by this process are seen at once). 0 turns it off.
    read_cache_seconds: float = 1.0
    # Seconds a live lookup may take before the request answers 503.
    live_lookup_timeout_seconds: float = 20.0
    # Bounded backoff for the poller loops after a failed pass.
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # Pre-signed configuration URLs: their lifetime, and how long one signature is reused.
    presign_expires_seconds: int = 3600
    presign_reuse_seconds: int = 600
    # SQS queues EventBridge delivers image state changes to (each in the region of its URL).
    events_queue_urls: tuple[str, ...] = ()
    # Concurrent long-poll receivers per queue.
    events_receivers: int = 2
    # Targeted refreshes (AWS look-ups of one image an event could not fully describe) at once.
    refresh_concurrency: int = 4
    # Transitions and document revisions older than this are pruned in the background.
    history_days: float = 365.0
    # The change stream: how often it looks for other replicas' changes, and its heartbeat.
    sse_poll_seconds: float = 1.0
    sse_heartbeat_seconds: float = 15.0
    # After SIGTERM: the bound on draining (readiness 503, streams ended, requests and the event batch in hand
    # finished, loops stopped) before the process exits.
    shutdown_seconds: float = 10.0
    # SQL pool and timeouts (PostgreSQL).
    db_pool_size: int = 10
    db_max_overflow: int = 10
    db_pool_timeout_seconds: float = 10.0
    db_statement_timeout_ms: int = 15000

    @property
    def default_region(self) -> str:
        return self.regions[0]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **values: Any) -> Settings:
        return replace(self, **{key: value for key, value in values.items() if value is not None})


def normalize_database_url(url: str) -> str:
    """Accept the URL forms operators paste (postgres://, postgresql://) and pick the async drivers."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _regions(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("STATUSCACHE_REGIONS", "")
    regions = tuple(part.strip() for part in raw.split(",") if part.strip())
    source = "STATUSCACHE_REGIONS"
    if not regions:
        source = next((name for name in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(name)), "the AWS profile")
        default = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _profile_region()
        regions = (default or FALLBACK_REGION,)
    for region in regions:
        if not REGION_PATTERN.match(region):
            raise ConfigurationError(f"{source}: {region!r} is not an AWS region name")
    return tuple(dict.fromkeys(regions))


def _profile_region() -> str | None:
    # botocore resolves the profile's region (AWS_PROFILE, ~/.aws/config) without any AWS call.
    import botocore.session

    region: str | None = botocore.session.get_session().get_config_variable("region")
    return region


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings from the environment; a bad value raises ConfigurationError."""
    env = os.environ if env is None else env
    log_level = (env.get("STATUSCACHE_LOG_LEVEL") or "INFO").strip().upper()
    if log_level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
        raise ConfigurationError(f"STATUSCACHE_LOG_LEVEL: unknown level {log_level!r}")
    settings = Settings(
        database_url=normalize_database_url(env.get("STATUSCACHE_DATABASE_URL") or DEFAULT_DATABASE_URL),
        regions=_regions(env),
        resync_seconds=_number(env, "STATUSCACHE_RESYNC_SECONDS", 300.0, minimum=1.0),
        negative_ttl_seconds=_number(env, "STATUSCACHE_NEGATIVE_TTL_SECONDS", 30.0),
        log_level=log_level,
        live_lookups_per_second=_number(env, "STATUSCACHE_LIVE_LOOKUPS_PER_SECOND", 20.0, minimum=0.1),
        read_cache_seconds=_number(env, "STATUSCACHE_READ_CACHE_SECONDS", 1.0),
        live_lookup_timeout_seconds=_number(env, "STATUSCACHE_LIVE_LOOKUP_TIMEOUT_SECONDS", 20.0, minimum=1.0),
        backoff_initial_seconds=_number(env, "STATUSCACHE_BACKOFF_INITIAL_SECONDS", 1.0, minimum=0.01),
        backoff_max_seconds=_number(env, "STATUSCACHE_BACKOFF_MAX_SECONDS", 60.0, minimum=0.01),
        presign_expires_seconds=int(_number(env, "STATUSCACHE_PRESIGN_EXPIRES_SECONDS", 3600, minimum=60)),
        presign_reuse_seconds=int(_number(env, "STATUSCACHE_PRESIGN_REUSE_SECONDS", 600, minimum=1)),
        events_queue_urls=tuple(
            url.strip() for url in env.get("STATUSCACHE_EVENTS_QUEUE_URL", "").split(",") if url.strip()
        ),
        events_receivers=int(_number(env, "STATUSCACHE_EVENTS_RECEIVERS", 2, minimum=1)),
        refresh_concurrency=int(_number(env, "STATUSCACHE_REFRESH_CONCURRENCY", 4, minimum=1)),
        history_days=_number(env, "STATUSCACHE_HISTORY_DAYS", 365.0, minimum=1),
        shutdown_seconds=_number(env, "STATUSCACHE_SHUTDOWN_SECONDS", 10.0, minimum=0.1),
        db_pool_size=int(_number(env, "STATUSCACHE_DB_POOL_SIZE", 10, minimum=1)),
        db_max_overflow=int(_number(env, "STATUSCACHE_DB_MAX_OVERFLOW", 10)),
        db_pool_timeout_seconds=_number(env, "STATUSCACHE_DB_POOL_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        db_statement_timeout_ms=int(_number(env, "STATUSCACHE_DB_STATEMENT_TIMEOUT_MS", 15000, minimum=0)),
    )
    if settings.presign_reuse_seconds >= settings.presign_expires_seconds:
        raise ConfigurationError(
            "STATUSCACHE_PRESIGN_REUSE_SECONDS must be shorter than STATUSCACHE_PRESIGN_EXPIRES_SECONDS"
        )
    return settings
