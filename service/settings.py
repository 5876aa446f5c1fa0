"""One typed Settings object, built once from the environment (and CLI overrides) and passed down.

Every knob is a field of Settings with its default written there and nowhere else; its environment
variable is STATUSCACHE_<FIELD NAME upper-cased> unless the field says otherwise, and from_env reads
every field, so a new knob needs one line here and one row in the README's table (a test holds both). A
renamed knob keeps its older variable (`older`), read when the new one is unset, so existing configurations
keep working.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any

from service.domain.models import REGION_PATTERN
from service.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./statuscache.db"
FALLBACK_REGION = "us-east-1"
# What a browser sends in `Origin`: a scheme, a host and an optional port, nothing else.
ORIGIN_PATTERN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def knob(
    default: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    env: str | None = None,
    older: str | None = None,
) -> Any:
    """A setting's default, with the range from_env accepts, where it differs its variable's name, and the
    variable it was read from before a rename (still read when the new one is unset)."""
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum, "env": env, "older": older})


@dataclass(frozen=True)
class Settings:
    """Every knob, with its documented default."""

    # Where the cache lives; SQLite is the embedded default, PostgreSQL for several replicas.
    database_url: str = DEFAULT_DATABASE_URL
    # Regions served; the first one answers requests that name no region.
    regions: tuple[str, ...] = (FALLBACK_REGION,)
    # Where `serve` listens (the CLI's --host and --port override them).
    host: str = "127.0.0.1"
    port: int = knob(8080, minimum=0, maximum=65535)
    # API only, no poller (a replica behind a load balancer); the CLI's --no-poll sets it too.
    no_poll: bool = False
    # Processes `serve` runs on its one port (the CLI's --workers overrides it). 1: one process, no supervisor.
    # With more, one of them (the holder of the poller lease) does the background work a single process does.
    workers: int = knob(1, minimum=1)
    log_level: str = "INFO"
    # "text" (a terminal) or "json" (one object per line, for a log pipeline).
    log_format: str = "text"
    # One log line per HTTP request (method, path, status, duration, route, cache outcome, request id, caller).
    access_log: bool = False
    # Seconds between reconciliation passes per region (one also runs at start).
    resync_seconds: float = knob(300.0, minimum=1.0)
    # Seconds a "no such image" answer is remembered, so unknown ids cannot flood AWS.
    negative_ttl_seconds: float = knob(30.0, minimum=0.0)
    # Live lookups (cache misses) allowed per second per region; past it the answer is 429.
    live_lookups_per_second: float = knob(20.0, minimum=0.1)
    # Each caller's share of them (per token when authentication is on, else per client address), so one
    # caller's flood of unknown ids cannot use up everyone's first lookups.
    live_lookups_per_caller_per_second: float = knob(10.0, minimum=0.1)
    # Seconds a record read from SQL may be served again from memory; bounds how late a change made by
    # another replica is seen (changes made by this process are seen at once). 0 turns it off.
    read_cache_seconds: float = knob(1.0, minimum=0.0)
    # Seconds a live lookup may take: EC2 or CloudFormation slower than this answers 503; an Image Builder or S3
    # part slower than this is left out of the answer (as pcluster would without it) and looked at again later.
    live_lookup_timeout_seconds: float = knob(20.0, minimum=1.0)
    # Bounded backoff for the poller loops after a failed pass.
    backoff_initial_seconds: float = knob(1.0, minimum=0.01)
    backoff_max_seconds: float = knob(60.0, minimum=0.01)
    # A recheck (a look at AWS that got no answer: a part of a lookup, an event's targeted refresh) is retried in
    # the background after this, doubling per failure up to the maximum: how soon after AWS recovers the cache is
    # whole again. `older`: the variables' names before rechecks had their name.
    recheck_backoff_initial_seconds: float = knob(
        1.0, minimum=0.01, older="STATUSCACHE_HEAL_BACKOFF_INITIAL_SECONDS"
    )
    recheck_backoff_max_seconds: float = knob(15.0, minimum=0.01, older="STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS")
    # A cached answer not confirmed against AWS for longer than this carries `X-Cache-Stale: unconfirmed`;
    # 0 means two reconciliation intervals.
    stale_after_seconds: float = knob(0.0, minimum=0.0)
    # Pre-signed configuration URLs: their lifetime, and how long one signature is reused.
    presign_expires_seconds: int = knob(3600, minimum=60)
    presign_reuse_seconds: int = knob(600, minimum=1)
    # SQS queues EventBridge delivers image state changes to (each in the region of its URL).
    events_queue_urls: tuple[str, ...] = knob((), env="STATUSCACHE_EVENTS_QUEUE_URL")
    # Concurrent long-poll receivers per queue.
    events_receivers: int = knob(2, minimum=1)
    # Targeted refreshes (AWS look-ups of one image an event could not fully describe) at once.
    refresh_concurrency: int = knob(4, minimum=1)
    # Transitions and document revisions older than this are pruned in the background.
    history_days: float = knob(365.0, minimum=1.0)
    # A build's evidence (stack events, log streams, log events), kept when it ends: what a failed build may keep
    # of its log events (bytes of messages, events), what a completed one may, captures at once, captures per
    # second per region (their own budget: never the live lookups'), and how long after its end a build is still
    # captured (its resources are gone long before).
    evidence_failed_max_bytes: int = knob(5_000_000, minimum=0)
    evidence_failed_max_events: int = knob(50_000, minimum=0)
    evidence_complete_max_bytes: int = knob(500_000, minimum=0)
    evidence_complete_max_events: int = knob(5_000, minimum=0)
    evidence_concurrency: int = knob(2, minimum=1)
    evidence_captures_per_second: float = knob(2.0, minimum=0.1)
    evidence_lookback_hours: float = knob(24.0, minimum=0.1)
    # The bound on each history query (fleet at a moment, transitions, builds, summaries, each export batch).
    history_query_seconds: float = knob(10.0, minimum=0.1)
    # The change stream: how often it looks for other replicas' changes, and its heartbeat.
    sse_poll_seconds: float = knob(1.0, minimum=0.05)
    sse_heartbeat_seconds: float = knob(15.0, minimum=1.0)
    # Change-stream clients one process serves at once; one more is answered 503 (it retries, or another replica).
    sse_max_clients: int = knob(20_000, minimum=1)
    # Recent changes kept in memory: a client resuming within them is served without a query.
    sse_ring_size: int = knob(1000, minimum=1)
    # Events a client may have waiting to be written before it counts as too slow and is dropped (it resumes
    # with Last-Event-ID, from memory when still within the ring). At least a page of the change feed (100
    # revisions), which reaches every client at once.
    sse_client_backlog: int = knob(1000, minimum=100)
    # After SIGTERM: the bound on draining (readiness 503, streams ended, requests and the event batch in hand
    # finished, loops stopped) before the process exits.
    shutdown_seconds: float = knob(10.0, minimum=0.1)
    # What one HTTP request may send before it is refused (414 / 431), and how long its headers may take (408).
    max_request_line_bytes: int = knob(8192, minimum=256)
    max_header_bytes: int = knob(32768, minimum=1024)
    header_timeout_seconds: float = knob(10.0, minimum=0.1)
    # SQL pool and timeouts (PostgreSQL).
    db_pool_size: int = knob(10, minimum=1)
    db_max_overflow: int = knob(10, minimum=0)
    db_pool_timeout_seconds: float = knob(10.0, minimum=0.1)
    db_statement_timeout_ms: int = knob(15000, minimum=0)
    # Who may call the API: a file of `NAME SHA256HEX` lines (the SHA-256 of each caller's token, never the
    # token), re-read on SIGHUP. Unset: every route is anonymous, which `serve` allows only on loopback.
    api_tokens_file: str = ""
    # Serve anonymously on a non-loopback address on purpose (without it, `serve` refuses to start there).
    allow_anonymous: bool = False
    # The proxies whose X-Forwarded-For/-Proto are believed (uvicorn's --forwarded-allow-ips: addresses, networks or
    # "*"); uvicorn's FORWARDED_ALLOW_IPS is honoured too. Unset: no proxy-headers middleware at all (uvicorn puts
    # one in front of every request by default, trusting 127.0.0.1; it cost ~3% of a cached describe).
    forwarded_allow_ips: str = ""
    # /metrics needs a token too (by default it is open, like /healthz, for scrapers).
    metrics_auth: bool = False
    # Browser origins (scheme://host[:port]) allowed to read the API and the change stream cross-origin.
    cors_origins: tuple[str, ...] = ()
    # Notifications: a TOML file of webhook, SNS and SSM-parameter subscriptions, re-read on SIGHUP. Unset: none.
    subscriptions_file: str = ""
    # A failed delivery is tried again after this, doubling (with jitter) to the maximum between attempts, and
    # given up (kept as a dead letter) once its first failure is this old.
    notify_retry_initial_seconds: float = knob(2.0, minimum=0.01)
    notify_retry_max_seconds: float = knob(3600.0, minimum=0.01)
    notify_give_up_seconds: float = knob(86400.0, minimum=0.01)
    # The bound on one attempt (a webhook's whole request, an AWS call).
    notify_timeout_seconds: float = knob(10.0, minimum=0.1)
    # How often deliverers look for other replicas' changes (this process's own wake them at once).
    notify_poll_seconds: float = knob(1.0, minimum=0.05)

    @property
    def default_region(self) -> str:
        return self.regions[0]

    @property
    def stale_bound_seconds(self) -> float:
        """How long a cached answer may go unconfirmed before it is flagged (STATUSCACHE_STALE_AFTER_SECONDS)."""
        return self.stale_after_seconds or 2 * self.resync_seconds

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **values: Any) -> Settings:
        return replace(self, **{key: value for key, value in values.items() if value is not None})


def env_name(setting: Field[Any]) -> str:
    """The environment variable a setting is read from."""
    named: str | None = setting.metadata.get("env")
    return named or f"STATUSCACHE_{setting.name.upper()}"


def older_env_name(setting: Field[Any]) -> str | None:
    """The variable a renamed setting was read from before, if any."""
    older: str | None = setting.metadata.get("older")
    return older


def variable(env: Mapping[str, str], setting: Field[Any]) -> str:
    """Which variable to read `setting` from: its own, unless only its older name is set (an existing config)."""
    name = env_name(setting)
    older = older_env_name(setting)
    if older is not None and not env.get(name, "").strip() and env.get(older, "").strip():
        return older
    return name


def normalize_database_url(url: str) -> str:
    """Accept the URL forms operators paste (postgres://, postgresql://) and pick the async drivers."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


# The drivers this release ships (normalize_database_url has picked them by now).
SUPPORTED_DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")


def shown_url(url: str) -> str:
    """The URL as it may be printed or logged: its password replaced by ***."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if not at or ":" not in user:
        return url
    return f"{scheme}{separator}{user.partition(':')[0]}:***@{host}{slash}{path}"


def _database_url(env: Mapping[str, str]) -> str:
    url = normalize_database_url(env.get("STATUSCACHE_DATABASE_URL") or DEFAULT_DATABASE_URL)
    scheme = url.partition("://")[0]
    if scheme not in SUPPORTED_DATABASE_SCHEMES:
        raise ConfigurationError(
            f"STATUSCACHE_DATABASE_URL: {scheme or url!r} databases are not supported ({shown_url(url)}); use "
            "sqlite:///PATH (embedded) or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    return url


def _number(env: Mapping[str, str], setting: Field[Any]) -> float | int:
    name = variable(env, setting)
    default = setting.default
    assert isinstance(default, int | float)
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from exc
    minimum, maximum = setting.metadata.get("minimum"), setting.metadata.get("maximum")
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise ConfigurationError(f"{name} must be at least {minimum:g}, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be at most {maximum:g}, got {raw!r}")
    if isinstance(default, int):
        if not value.is_integer():
            raise ConfigurationError(f"{name} must be a whole number, got {raw!r}")
        return int(value)
    return value


def _flag(env: Mapping[str, str], setting: Field[Any]) -> bool:
    name = variable(env, setting)
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return bool(setting.default)
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def _regions(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("STATUSCACHE_REGIONS", "")
    regions = tuple(part.strip() for part in raw.split(",") if part.strip())
    source = "STATUSCACHE_REGIONS"
    if not regions:
        source = next((name for name in ("AWS_REGION", "AWS_DEFAULT_REGION") if env.get(name)), "the AWS profile")
        default = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _profile_region()
        regions = (default or FALLBACK_REGION,)
    for region in regions:
        if not REGION_PATTERN.fullmatch(region):
            raise ConfigurationError(f"{source}: {region!r} is not an AWS region name")
    return tuple(dict.fromkeys(regions))


def _profile_region() -> str | None:
    # botocore resolves the profile's region (AWS_PROFILE, ~/.aws/config) without any AWS call.
    import botocore.exceptions
    import botocore.session

    try:
        region: str | None = botocore.session.get_session().get_config_variable("region")
    except botocore.exceptions.BotoCoreError as exc:
        # A profile that does not exist, a malformed ~/.aws/config: refuse to start, in botocore's words.
        raise ConfigurationError(f"AWS configuration: {exc}") from exc
    return region


def _log_level(env: Mapping[str, str]) -> str:
    level = (env.get("STATUSCACHE_LOG_LEVEL") or Settings.log_level).strip().upper()
    if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
        raise ConfigurationError(f"STATUSCACHE_LOG_LEVEL: unknown level {level!r}")
    return level


def _comma_list(env: Mapping[str, str], setting: Field[Any]) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(env_name(setting), "").split(",") if part.strip())


def _origins(env: Mapping[str, str], setting: Field[Any]) -> tuple[str, ...]:
    """Exact origins, as a browser sends them in `Origin`: a wildcard would hand credentials to any site."""
    # Browsers serialize an origin in lower case.
    origins = tuple(dict.fromkeys(origin.lower() for origin in _comma_list(env, setting)))
    for origin in origins:
        if not ORIGIN_PATTERN.fullmatch(origin):
            raise ConfigurationError(
                f"{env_name(setting)}: {origin!r} is not an origin; list each as scheme://host[:port], "
                "e.g. https://dashboard.example.com (no path, no trailing slash, no wildcard)"
            )
    return origins


def _log_format(env: Mapping[str, str]) -> str:
    kind = (env.get("STATUSCACHE_LOG_FORMAT") or Settings.log_format).strip().lower()
    if kind not in {"text", "json"}:
        raise ConfigurationError(f"STATUSCACHE_LOG_FORMAT must be text or json, got {kind!r}")
    return kind


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate Settings from the environment; a bad value raises ConfigurationError naming it."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "database_url": _database_url(env),
        "regions": _regions(env),
        "log_level": _log_level(env),
        "log_format": _log_format(env),
    }
    for setting in fields(Settings):
        if setting.name in values:
            continue
        if setting.name == "events_queue_urls":
            values[setting.name] = _comma_list(env, setting)
        elif setting.name == "cors_origins":
            values[setting.name] = _origins(env, setting)
        elif isinstance(setting.default, bool):
            values[setting.name] = _flag(env, setting)
        elif isinstance(setting.default, int | float):
            values[setting.name] = _number(env, setting)
        else:
            values[setting.name] = (env.get(variable(env, setting)) or "").strip() or setting.default
    settings = Settings(**values)
    if settings.presign_reuse_seconds >= settings.presign_expires_seconds:
        raise ConfigurationError(
            "STATUSCACHE_PRESIGN_REUSE_SECONDS must be shorter than STATUSCACHE_PRESIGN_EXPIRES_SECONDS"
        )
    return settings
