"""Without AWS to ask, serve, poll and sync refuse to start: exit 2, one line, nothing started, never the demo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import service.__main__ as cli
from service import runner
from service.errors import ConfigurationError, DatabaseUnavailable, StartupFailed
from service.support.workers import Outcome


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing for botocore to find: no AWS_* variables, an empty HOME, no shared files, no instance role."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing" / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing" / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("STATUSCACHE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cache.db'}")
    monkeypatch.setenv("STATUSCACHE_REGIONS", "us-east-1")
    return tmp_path


@pytest.mark.parametrize(
    ("variables", "configured"),
    [
        pytest.param({}, False, id="nothing"),
        pytest.param({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}, True, id="endpoint"),
        pytest.param({"AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:5000"}, True, id="service-endpoint"),
        pytest.param({"AWS_ENDPOINT_URL": ""}, False, id="empty-endpoint"),
        pytest.param({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}, True, id="keys"),
    ],
)
def test_aws_configured_by_credentials_or_an_endpoint(
    no_aws: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], configured: bool
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert runner.aws_configured() is configured


def test_aws_configured_by_the_shared_credentials_file(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = no_aws / "credentials"
    credentials.write_text("[ops]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_PROFILE", "ops")

    assert runner.aws_configured()


def test_require_aws_names_what_is_missing_and_offers_the_demo(no_aws: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        runner.require_aws()

    message = str(refused.value)
    assert "\n" not in message
    for named in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "~/.aws/credentials", "~/.aws/config",
        "instance role", "AWS_ENDPOINT_URL", "`statuscache demo`",
    ):  # fmt: skip
        assert named in message


def test_require_aws_refuses_half_a_key_pair_in_botocores_words(no_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")

    with pytest.raises(ConfigurationError, match="AWS_SECRET_ACCESS_KEY"):
        runner.require_aws()


@pytest.mark.parametrize(
    "argv", [["serve"], ["serve", "--no-poll"], ["serve", "--workers", "2"], ["poll"], ["sync", "--once"], ["sync"]],
    ids=" ".join,
)
def test_command_without_aws_exits_2_with_one_line_and_starts_nothing(
    no_aws: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert cli.main(argv) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"statuscache: {runner.NO_AWS}\n"
    # Refused before anything started: not even the embedded database was created.
    assert not (no_aws / "cache.db").exists()


def test_demo_is_a_command_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATUSCACHE_HOST", raising=False)
    monkeypatch.delenv("STATUSCACHE_PORT", raising=False)
    parser = cli._parser()

    defaults = cli._settings(parser.parse_args(["demo"]))
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8080)
    chosen = cli._settings(parser.parse_args(["demo", "--host", "127.0.0.2", "--port", "9000"]))
    assert (chosen.host, chosen.port) == ("127.0.0.2", 9000)
    # `serve` is always the real service: it has no way to be asked for the demo.
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--demo"])


# --- protected mode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
        ("LocalHost", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False),
        ("192.168.1.20", False), ("cache.internal", False), ("localhost.example.com", False),
    ],
)  # fmt: skip
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert runner.is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("host", "tokens_file", "anonymous", "starts"),
    [
        ("127.0.0.1", "", False, True),  # `make run`: a developer's laptop stays anonymous
        ("::1", "", False, True),
        ("0.0.0.0", "", False, False),
        ("10.0.0.5", "", False, False),
        ("0.0.0.0", "/etc/statuscache/tokens", False, True),
        ("0.0.0.0", "", True, True),  # anonymous, on purpose
        ("0.0.0.0", "/etc/statuscache/tokens", True, True),
    ],
)
def test_beyond_loopback_serve_needs_tokens_or_an_explicit_anonymous(
    host: str, tokens_file: str, anonymous: bool, starts: bool
) -> None:
    from service.settings import Settings

    settings = Settings(host=host, api_tokens_file=tokens_file, allow_anonymous=anonymous)
    if starts:
        runner.require_protection(settings)
    else:
        with pytest.raises(ConfigurationError):
            runner.require_protection(settings)


@pytest.mark.parametrize("aws", [False, True], ids=["without-aws", "with-aws"])
@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serving_beyond_loopback_without_tokens_exits_2_naming_both_ways_out(
    no_aws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], aws: bool, command: str
) -> None:
    if aws:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("STATUSCACHE_API_TOKENS_FILE", raising=False)
    monkeypatch.delenv("STATUSCACHE_ALLOW_ANONYMOUS", raising=False)

    assert cli.main([command, "--host", "0.0.0.0"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"statuscache: {runner.unprotected('0.0.0.0')}\n"
    assert "STATUSCACHE_API_TOKENS_FILE" in err and "STATUSCACHE_ALLOW_ANONYMOUS=1" in err
    assert not (no_aws / "cache.db").exists()


def test_a_tokens_file_that_cannot_be_read_refuses_to_start(
    no_aws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("STATUSCACHE_API_TOKENS_FILE", str(no_aws / "no-such-tokens"))

    assert cli.main(["serve", "--host", "0.0.0.0"]) == 2

    _, err = capsys.readouterr()
    assert err.startswith("statuscache: STATUSCACHE_API_TOKENS_FILE: cannot read") and err.count("\n") == 1
    assert not (no_aws / "cache.db").exists()


@pytest.mark.parametrize(
    ("argv", "env", "workers"),
    [
        pytest.param(["serve"], {}, 1, id="default"),
        pytest.param(["serve"], {"STATUSCACHE_WORKERS": "3"}, 3, id="variable"),
        pytest.param(["serve", "--workers", "2"], {"STATUSCACHE_WORKERS": "3"}, 2, id="flag-wins"),
    ],
)
def test_workers_come_from_the_flag_else_the_variable(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], workers: int
) -> None:
    monkeypatch.delenv("STATUSCACHE_WORKERS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli._settings(cli._parser().parse_args(argv)).workers == workers


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_below_one_are_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args(["serve", "--workers", value])
    assert exited.value.code == 2
    assert "--workers: must be a whole number of at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("outcome", "error", "says"),
    [
        (Outcome(status=1, failed_worker=2, ended="exit status 1", refusal="ConfigurationError the file is gone"),
         ConfigurationError, "the file is gone"),
        (Outcome(status=1, failed_worker=1, ended="exit status 1", refusal="DatabaseUnavailable cannot reach it"),
         DatabaseUnavailable, "cannot reach it"),
        (Outcome(status=3, failed_worker=2, ended="exit status 3"),
         StartupFailed, "worker 2 did not start (exit status 3; see the lines above)"),
        (Outcome(status=1, failed_worker=1, ended="killed by SIGKILL"),
         StartupFailed, "worker 1 did not start (killed by SIGKILL; see the lines above)"),
    ],
)  # fmt: skip
def test_a_worker_that_did_not_start_ends_serve_with_its_own_refusal(
    outcome: Outcome, error: type[Exception], says: str
) -> None:
    """The worker's own line and so its exit status (2, 75), as one process would have ended; else 3, naming it."""
    refusal = runner.worker_refusal(outcome)
    assert type(refusal) is error and str(refusal) == says
