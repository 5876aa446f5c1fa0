"""Settings from the environment: documented defaults, region fallbacks, validation, database URL forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.errors import ConfigurationError
from service.settings import DEFAULT_DATABASE_URL, Settings, from_env, normalize_database_url, shown_url


@pytest.fixture(autouse=True)
def no_ambient_aws_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No region may leak in from the developer's shell or ~/.aws/config (botocore reads os.environ)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-such-aws-config"))


def test_empty_environment_gives_the_documented_defaults() -> None:
    assert from_env({}) == Settings()


def test_the_demo_is_not_a_setting() -> None:
    # The demo is a command (`statuscache demo`), never a switch that turns `serve` into it.
    assert from_env({"STATUSCACHE_DEMO": "1"}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("database_url", "sqlite+aiosqlite:///./statuscache.db"),
        ("regions", ("us-east-1",)),
        ("resync_seconds", 300.0),
        ("negative_ttl_seconds", 30.0),
        ("log_level", "INFO"),
        ("live_lookups_per_second", 20.0),
        ("live_lookups_per_caller_per_second", 10.0),
        ("live_lookup_timeout_seconds", 20.0),
        ("recheck_backoff_initial_seconds", 1.0),
        ("recheck_backoff_max_seconds", 15.0),
        ("stale_after_seconds", 0.0),
        ("db_pool_size", 10),
        ("db_max_overflow", 10),
        ("db_pool_timeout_seconds", 10.0),
        ("db_statement_timeout_ms", 15000),
        ("api_tokens_file", ""),
        ("allow_anonymous", False),
        ("metrics_auth", False),
        ("cors_origins", ()),
    ],
)
def test_default_value(name: str, value: Any) -> None:
    assert getattr(from_env({}), name) == value


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATUSCACHE_REGIONS", "eu-north-1")
    monkeypatch.setenv("STATUSCACHE_DATABASE_URL", "postgres://app@db/cache")

    settings = from_env()

    assert settings.regions == ("eu-north-1",)
    assert settings.database_url == "postgresql+asyncpg://app@db/cache"


# --- regions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "regions"),
    [
        pytest.param({}, ("us-east-1",), id="fallback"),
        pytest.param({"AWS_DEFAULT_REGION": "eu-west-1"}, ("eu-west-1",), id="aws-default-region"),
        pytest.param(
            {"AWS_REGION": "ap-southeast-2", "AWS_DEFAULT_REGION": "eu-west-1"}, ("ap-southeast-2",), id="aws-region"
        ),
        pytest.param(
            {"STATUSCACHE_REGIONS": "us-west-2", "AWS_REGION": "ap-southeast-2", "AWS_DEFAULT_REGION": "eu-west-1"},
            ("us-west-2",),
            id="statuscache-regions",
        ),
        pytest.param({"STATUSCACHE_REGIONS": "", "AWS_REGION": "ca-central-1"}, ("ca-central-1",), id="empty-list"),
        pytest.param({"STATUSCACHE_REGIONS": " , ,", "AWS_REGION": "ca-central-1"}, ("ca-central-1",), id="blank-list"),
        pytest.param({"AWS_REGION": "", "AWS_DEFAULT_REGION": "sa-east-1"}, ("sa-east-1",), id="empty-aws-region"),
    ],
)
def test_regions_fall_back_from_statuscache_regions_to_aws_region_to_default(
    env: dict[str, str], regions: tuple[str, ...]
) -> None:
    assert from_env(env).regions == regions


def test_regions_fall_back_to_the_aws_profile_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-central-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))

    assert from_env({}).regions == ("eu-central-1",)
    assert from_env({"AWS_DEFAULT_REGION": "eu-west-3"}).regions == ("eu-west-3",)


@pytest.mark.parametrize(
    ("raw", "regions"),
    [
        ("us-east-1", ("us-east-1",)),
        ("us-east-1,eu-west-1", ("us-east-1", "eu-west-1")),
        (" us-east-1 , eu-west-1 ", ("us-east-1", "eu-west-1")),
        ("eu-west-1,us-east-1", ("eu-west-1", "us-east-1")),
        ("us-east-1,eu-west-1,us-east-1", ("us-east-1", "eu-west-1")),
        ("eu-west-1, eu-west-1 ,eu-west-1", ("eu-west-1",)),
        ("us-east-1,,eu-west-1,", ("us-east-1", "eu-west-1")),
        ("us-gov-west-1,cn-north-1,ap-southeast-4", ("us-gov-west-1", "cn-north-1", "ap-southeast-4")),
    ],
)
def test_region_list_is_trimmed_and_deduplicated_keeping_order(raw: str, regions: tuple[str, ...]) -> None:
    settings = from_env({"STATUSCACHE_REGIONS": raw})

    assert settings.regions == regions
    assert settings.default_region == regions[0]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"STATUSCACHE_REGIONS": "us-east-1,not a region"}, "STATUSCACHE_REGIONS", id="space"),
        pytest.param({"STATUSCACHE_REGIONS": "US-EAST-1"}, "STATUSCACHE_REGIONS", id="upper-case"),
        pytest.param({"STATUSCACHE_REGIONS": "us-east-1;eu-west-1"}, "STATUSCACHE_REGIONS", id="semicolon"),
        pytest.param({"STATUSCACHE_REGIONS": "useast1"}, "STATUSCACHE_REGIONS", id="no-dashes"),
        pytest.param({"STATUSCACHE_REGIONS": "us-east-123"}, "STATUSCACHE_REGIONS", id="long-number"),
        pytest.param({"AWS_REGION": "bogus"}, "AWS_REGION", id="aws-region"),
        pytest.param({"AWS_DEFAULT_REGION": "bogus"}, "AWS_DEFAULT_REGION", id="aws-default-region"),
    ],
)
def test_bad_region_is_refused_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        from_env(env)


# --- numbers, flags, log level ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "name", "value"),
    [
        ("STATUSCACHE_RESYNC_SECONDS", "60", "resync_seconds", 60.0),
        ("STATUSCACHE_RESYNC_SECONDS", " 1.5 ", "resync_seconds", 1.5),
        ("STATUSCACHE_NEGATIVE_TTL_SECONDS", "0", "negative_ttl_seconds", 0.0),
        ("STATUSCACHE_LIVE_LOOKUPS_PER_SECOND", "0.5", "live_lookups_per_second", 0.5),
        ("STATUSCACHE_LIVE_LOOKUP_TIMEOUT_SECONDS", "5", "live_lookup_timeout_seconds", 5.0),
        ("STATUSCACHE_DB_POOL_SIZE", "3", "db_pool_size", 3),
        ("STATUSCACHE_DB_MAX_OVERFLOW", "0", "db_max_overflow", 0),
        ("STATUSCACHE_DB_POOL_TIMEOUT_SECONDS", "2.5", "db_pool_timeout_seconds", 2.5),
        ("STATUSCACHE_DB_STATEMENT_TIMEOUT_MS", "0", "db_statement_timeout_ms", 0),
        # Settings' docstring: "Environment names are STATUSCACHE_<NAME upper-cased>" for every knob.
        ("STATUSCACHE_BACKOFF_INITIAL_SECONDS", "0.5", "backoff_initial_seconds", 0.5),
        ("STATUSCACHE_BACKOFF_MAX_SECONDS", "30", "backoff_max_seconds", 30.0),
        ("STATUSCACHE_PRESIGN_EXPIRES_SECONDS", "7200", "presign_expires_seconds", 7200),
        ("STATUSCACHE_PRESIGN_REUSE_SECONDS", "300", "presign_reuse_seconds", 300),
    ],
)
def test_number_is_read_from_its_environment_variable(variable: str, raw: str, name: str, value: float) -> None:
    settings = from_env({variable: raw})

    assert getattr(settings, name) == value
    assert type(getattr(settings, name)) is type(getattr(Settings(), name))


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("STATUSCACHE_RESYNC_SECONDS", "resync_seconds"),
        ("STATUSCACHE_DB_POOL_SIZE", "db_pool_size"),
        ("STATUSCACHE_DB_STATEMENT_TIMEOUT_MS", "db_statement_timeout_ms"),
    ],
)
@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_number_means_the_default(variable: str, name: str, raw: str) -> None:
    assert getattr(from_env({variable: raw}), name) == getattr(Settings(), name)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STATUSCACHE_RESYNC_SECONDS", "five"),
        ("STATUSCACHE_RESYNC_SECONDS", "0"),
        ("STATUSCACHE_RESYNC_SECONDS", "0.5"),
        ("STATUSCACHE_RESYNC_SECONDS", "nan"),
        ("STATUSCACHE_NEGATIVE_TTL_SECONDS", "-1"),
        ("STATUSCACHE_NEGATIVE_TTL_SECONDS", "30s"),
        ("STATUSCACHE_LIVE_LOOKUPS_PER_SECOND", "0"),
        ("STATUSCACHE_LIVE_LOOKUPS_PER_SECOND", "0.05"),
        ("STATUSCACHE_LIVE_LOOKUPS_PER_SECOND", "NaN"),
        ("STATUSCACHE_LIVE_LOOKUP_TIMEOUT_SECONDS", "0.9"),
        ("STATUSCACHE_DB_POOL_SIZE", "0"),
        ("STATUSCACHE_DB_POOL_SIZE", "ten"),
        ("STATUSCACHE_DB_MAX_OVERFLOW", "-1"),
        ("STATUSCACHE_DB_POOL_TIMEOUT_SECONDS", "0"),
        ("STATUSCACHE_DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("STATUSCACHE_DB_STATEMENT_TIMEOUT_MS", "1e3x"),
    ],
)
def test_bad_number_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        from_env({variable: raw})


@pytest.mark.parametrize(
    ("raw", "level"),
    [("DEBUG", "DEBUG"), ("debug", "DEBUG"), ("Warning", "WARNING"), ("error", "ERROR"), ("CRITICAL", "CRITICAL")],
)
def test_log_level_is_case_insensitive(raw: str, level: str) -> None:
    assert from_env({"STATUSCACHE_LOG_LEVEL": raw}).log_level == level


@pytest.mark.parametrize("raw", ["verbose", "TRACE", "WARN", "10"])
def test_bad_log_level_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="STATUSCACHE_LOG_LEVEL"):
        from_env({"STATUSCACHE_LOG_LEVEL": raw})


@pytest.mark.parametrize(
    ("raw", "kind"), [(None, "text"), ("", "text"), ("json", "json"), ("JSON", "json"), ("text", "text")]
)
def test_log_format_is_text_unless_json_is_asked_for(raw: str | None, kind: str) -> None:
    env = {} if raw is None else {"STATUSCACHE_LOG_FORMAT": raw}
    assert from_env(env).log_format == kind


@pytest.mark.parametrize("raw", ["yaml", "logfmt", "1"])
def test_bad_log_format_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="STATUSCACHE_LOG_FORMAT"):
        from_env({"STATUSCACHE_LOG_FORMAT": raw})


def test_the_access_log_is_off_unless_asked_for() -> None:
    assert from_env({}).access_log is False
    assert from_env({"STATUSCACHE_ACCESS_LOG": "1"}).access_log is True


# --- database URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        pytest.param(None, DEFAULT_DATABASE_URL, id="unset"),
        pytest.param("", DEFAULT_DATABASE_URL, id="empty"),
        pytest.param("postgres://app:pw@db:5432/cache", "postgresql+asyncpg://app:pw@db:5432/cache", id="postgres"),
        pytest.param("sqlite:////var/lib/statuscache.db", "sqlite+aiosqlite:////var/lib/statuscache.db", id="sqlite"),
    ],
)
def test_database_url_comes_from_the_environment_normalized(raw: str | None, url: str) -> None:
    env = {} if raw is None else {"STATUSCACHE_DATABASE_URL": raw}

    settings = from_env(env)

    assert settings.database_url == url
    assert settings.is_sqlite is url.startswith("sqlite")


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("postgres://app:pw@db:5432/cache", "postgresql+asyncpg://app:pw@db:5432/cache"),
        ("postgresql://app@127.0.0.1/test", "postgresql+asyncpg://app@127.0.0.1/test"),
        ("postgresql+psycopg2://app@db/cache", "postgresql+asyncpg://app@db/cache"),
        ("postgresql+psycopg://app@db/cache", "postgresql+asyncpg://app@db/cache"),
        ("postgresql+asyncpg://app@db/cache?ssl=require", "postgresql+asyncpg://app@db/cache?ssl=require"),
        ("sqlite:///./statuscache.db", "sqlite+aiosqlite:///./statuscache.db"),
        ("sqlite:////abs/path.db", "sqlite+aiosqlite:////abs/path.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///./statuscache.db", "sqlite+aiosqlite:///./statuscache.db"),
        ("sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
    ],
)
def test_normalize_database_url_picks_the_async_driver(url: str, normalized: str) -> None:
    assert normalize_database_url(url) == normalized


# --- one definition of every knob -------------------------------------------------------------------

REPOSITORY = Path(__file__).resolve().parent.parent


def test_every_setting_is_read_from_its_variable_and_documented_in_the_readme() -> None:
    from dataclasses import fields

    from service.settings import env_name

    readme = (REPOSITORY / "README.md").read_text()
    for setting in fields(Settings):
        assert f"`{env_name(setting)}`" in readme, f"{env_name(setting)} is not in the README's table"


def test_a_renamed_settings_older_variable_is_documented_in_the_readme() -> None:
    from dataclasses import fields

    from service.settings import older_env_name

    readme = (REPOSITORY / "README.md").read_text()
    older = [name for setting in fields(Settings) if (name := older_env_name(setting)) is not None]
    assert older
    for name in older:
        assert f"`{name}`" in readme, f"{name} (an older name still read) is not in the README"


@pytest.mark.parametrize(
    ("env", "initial", "maximum"),
    [
        pytest.param(
            {"STATUSCACHE_HEAL_BACKOFF_INITIAL_SECONDS": "2", "STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS": "30"},
            2.0, 30.0, id="older-names-only",
        ),
        pytest.param(
            {"STATUSCACHE_RECHECK_BACKOFF_INITIAL_SECONDS": "3", "STATUSCACHE_HEAL_BACKOFF_INITIAL_SECONDS": "2"},
            3.0, 15.0, id="new-name-wins",
        ),
        pytest.param(
            {"STATUSCACHE_RECHECK_BACKOFF_MAX_SECONDS": " ", "STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS": "20"},
            1.0, 20.0, id="blank-new-name-falls-back",
        ),
    ],
)
def test_recheck_backoff_still_reads_the_older_heal_variables(
    env: dict[str, str], initial: float, maximum: float
) -> None:
    settings = from_env(env)
    assert (settings.recheck_backoff_initial_seconds, settings.recheck_backoff_max_seconds) == (initial, maximum)


def test_a_bad_value_under_the_older_name_names_the_older_variable() -> None:
    with pytest.raises(ConfigurationError, match="STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS"):
        from_env({"STATUSCACHE_HEAL_BACKOFF_MAX_SECONDS": "soon"})


def test_every_statuscache_variable_the_service_names_is_a_setting() -> None:
    import re
    from dataclasses import fields

    from service.settings import env_name, older_env_name

    known = {env_name(setting) for setting in fields(Settings)} | {"STATUSCACHE_LOG_LEVEL", "STATUSCACHE_REGIONS"}
    # A renamed knob's older variable is still read (existing configurations), so the service names it too.
    known |= {older for setting in fields(Settings) if (older := older_env_name(setting)) is not None}
    # The client's own environment (where the service is, its token): not the service's settings, and
    # documented in the README's "Client" section instead of its configuration table.
    client = {"STATUSCACHE_URL", "STATUSCACHE_TOKEN"}
    named = {
        name
        for path in (REPOSITORY / "service").rglob("*.py")
        for name in re.findall(r"STATUSCACHE_[A-Z_]+[A-Z]", path.read_text())
    }
    assert named - known == client
    assert not known & client
    readme = (REPOSITORY / "README.md").read_text()
    client_section = readme.split("\n## Client", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{name}`" in client_section for name in client)


@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"STATUSCACHE_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
        ({"STATUSCACHE_PORT": "9090"}, "port", 9090),
        ({"STATUSCACHE_NO_POLL": "1"}, "no_poll", True),
        ({"STATUSCACHE_NO_POLL": "off"}, "no_poll", False),
        ({"STATUSCACHE_READ_CACHE_SECONDS": "0"}, "read_cache_seconds", 0.0),
        ({"STATUSCACHE_SHUTDOWN_SECONDS": "2.5"}, "shutdown_seconds", 2.5),
        ({"STATUSCACHE_SSE_POLL_SECONDS": "0.2"}, "sse_poll_seconds", 0.2),
        ({"STATUSCACHE_API_TOKENS_FILE": " /etc/statuscache/tokens "}, "api_tokens_file", "/etc/statuscache/tokens"),
        ({"STATUSCACHE_API_TOKENS_FILE": ""}, "api_tokens_file", ""),
        ({"STATUSCACHE_ALLOW_ANONYMOUS": "1"}, "allow_anonymous", True),
        ({"STATUSCACHE_METRICS_AUTH": "yes"}, "metrics_auth", True),
    ],
)
def test_listen_address_and_the_other_knobs_come_from_the_environment(
    env: dict[str, str], name: str, value: Any
) -> None:
    assert getattr(from_env(env), name) == value


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STATUSCACHE_PORT", "70000"),
        ("STATUSCACHE_PORT", "80.5"),
        ("STATUSCACHE_NO_POLL", "maybe"),
        ("STATUSCACHE_EVENTS_RECEIVERS", "1.5"),
    ],
)
def test_out_of_range_or_fractional_values_are_refused_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        from_env({variable: raw})


def test_cli_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.__main__ import _parser, _settings

    monkeypatch.setenv("STATUSCACHE_HOST", "0.0.0.0")
    monkeypatch.setenv("STATUSCACHE_PORT", "9000")
    from_variables = _settings(_parser().parse_args(["serve"]))
    from_flags = _settings(_parser().parse_args(["serve", "--host", "127.0.0.2", "--port", "9001", "--no-poll"]))
    assert (from_variables.host, from_variables.port, from_variables.no_poll) == ("0.0.0.0", 9000, False)
    assert (from_flags.host, from_flags.port, from_flags.no_poll) == ("127.0.0.2", 9001, True)


@pytest.mark.parametrize("variable", ["STATUSCACHE_ALLOW_ANONYMOUS", "STATUSCACHE_METRICS_AUTH"])
def test_a_security_switch_is_refused_unless_it_is_clearly_on_or_off(variable: str) -> None:
    # "anonymous on purpose" must be said in so many words: a typo must not mean yes, nor silently no.
    with pytest.raises(ConfigurationError, match=variable):
        from_env({variable: "sure"})


@pytest.mark.parametrize(
    "url",
    ["mysql://app:pw@db/cache", "mysql+pymysql://db/cache", "oracle://db", "sqlite+pysqlite:///x.db", "cache.db"],
)
def test_a_database_url_without_a_shipped_driver_is_refused_naming_the_variable(url: str) -> None:
    with pytest.raises(ConfigurationError, match="STATUSCACHE_DATABASE_URL") as refused:
        from_env({"STATUSCACHE_DATABASE_URL": url})
    assert ":pw@" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://app:pw@db:5432/cache", "postgresql+asyncpg://app:***@db:5432/cache"),
        ("postgresql+asyncpg://app:p@ss@db/cache", "postgresql+asyncpg://app:***@db/cache"),
        ("postgresql+asyncpg://app@db/cache", "postgresql+asyncpg://app@db/cache"),
        ("sqlite+aiosqlite:///./statuscache.db", "sqlite+aiosqlite:///./statuscache.db"),
    ],
)
def test_a_shown_url_hides_only_the_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown
