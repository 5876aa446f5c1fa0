"""The tokens file and `statuscache token create`: hashes only, lines checked, tokens compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import statistics
import time
from pathlib import Path

import pytest

import service.__main__ as cli
from service.api import tokens
from service.api.tokens import Caller, TokenFile, Tokens, digest, parse
from service.errors import ConfigurationError

TOKEN = "sct_" + "a" * 43
OTHER = "sct_" + "b" * 43


def line(name: str, token: str) -> str:
    return f"{name} {hashlib.sha256(token.encode()).hexdigest()}"


def test_a_line_names_the_caller_of_the_token_whose_sha256_it_holds() -> None:
    table = parse(f"# who may call\n\n{line('alice', TOKEN)}\n  {line('ci.bot@team-1', OTHER)}  \n", source="t")

    assert table.identify(TOKEN.encode()) == Caller("alice", digest(TOKEN))
    assert table.identify(OTHER.encode()) == Caller("ci.bot@team-1", digest(OTHER))
    assert table.names == {"alice", "ci.bot@team-1"}
    assert len(table) == 2


def test_a_caller_may_hold_two_tokens_while_one_is_rotated() -> None:
    table = parse(f"{line('alice', TOKEN)}\n{line('alice', OTHER)}\n", source="t")

    assert table.identify(TOKEN.encode()).name == table.identify(OTHER.encode()).name == "alice"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param(OTHER, id="another-token"),
        pytest.param(TOKEN[:-1], id="one-character-short"),
        pytest.param(TOKEN + "a", id="one-character-long"),
        pytest.param(TOKEN.upper(), id="case-changed"),
        pytest.param(digest(TOKEN), id="the-digest-itself"),
        pytest.param("", id="empty"),
        pytest.param("x" * (tokens.MAX_TOKEN_BYTES + 1), id="huge"),
    ],
)
def test_anything_but_the_token_itself_identifies_nobody(presented: str) -> None:
    table = parse(line("alice", TOKEN), source="t")

    assert table.identify(presented.encode()) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(TOKEN, "line 1: expected NAME and the lowercase hex SHA-256", id="a-bare-token"),
        pytest.param(f"alice {TOKEN}", "line 1: expected NAME and the lowercase hex", id="a-token-not-its-hash"),
        pytest.param(f"# c\nalice {digest(TOKEN).upper()}", "line 2: expected NAME", id="uppercase-hex"),
        pytest.param(f"alice {digest(TOKEN)[:-1]}", "line 1: expected NAME", id="short-hash"),
        pytest.param(f"alice {digest(TOKEN)} extra", "line 1: expected NAME", id="three-fields"),
        pytest.param(f"al\x1bice {digest(TOKEN)}", "line 1: a caller's name is", id="control-character-in-name"),
        pytest.param(f"-alice {digest(TOKEN)}", "line 1: a caller's name is", id="name-starting-with-dash"),
        pytest.param(f"{'a' * 65} {digest(TOKEN)}", "line 1: a caller's name is", id="name-too-long"),
        pytest.param(
            f"{line('alice', TOKEN)}\n{line('bob', TOKEN)}", "line 2: the same token digest as line 1", id="shared"
        ),
    ],
)
def test_a_bad_line_is_refused_by_number_without_quoting_it(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse(text, source="/etc/statuscache/tokens")

    message = str(refused.value)
    assert message.startswith("/etc/statuscache/tokens ") and problem in message
    # The line may be a token pasted by mistake: the message must not carry it to a log or a terminal.
    assert TOKEN not in message and TOKEN[4:20] not in message
    assert "\n" not in message


def test_a_missing_file_is_refused_naming_the_variable_and_both_ways_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        TokenFile(str(tmp_path / "missing"))

    message = str(refused.value)
    expected = ("STATUSCACHE_API_TOKENS_FILE", str(tmp_path / "missing"), "statuscache token create", "ALLOW_ANONYMOUS")
    for named in expected:
        assert named in message


def test_reload_swaps_the_tokens_and_a_broken_file_keeps_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(line("alice", TOKEN) + "\n")
    held = TokenFile(str(path))
    assert held.tokens.identify(TOKEN.encode()) is not None

    path.write_text(line("bob", OTHER) + "\n")
    assert held.reload()
    assert held.tokens.identify(TOKEN.encode()) is None
    assert held.tokens.identify(OTHER.encode()).name == "bob"  # type: ignore[union-attr]

    path.write_text("bob not-a-hash\n")
    assert not held.reload()
    assert held.tokens.identify(OTHER.encode()).name == "bob"  # type: ignore[union-attr]
    path.unlink()
    assert not held.reload()
    assert held.tokens.identify(OTHER.encode()).name == "bob"  # type: ignore[union-attr]


def test_the_final_comparison_is_constant_time_on_a_hit_and_on_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    table = parse(line("alice", TOKEN), source="t")

    assert table.identify(TOKEN.encode()) is not None
    assert table.identify(OTHER.encode()) is None
    # Both paths end in one compare_digest of two full-length digests; the token itself is never compared.
    assert len(compared) == 2
    assert all(len(a) == len(b) == 64 for a, b in compared)
    assert all(TOKEN not in pair and OTHER not in pair for pair in compared)


def test_checking_a_near_miss_takes_as_long_as_checking_a_wild_guess() -> None:
    table = Tokens([Caller(f"caller-{index}", digest(f"{TOKEN}{index}")) for index in range(100)])
    near = (TOKEN + "0")[:-1].encode() + b"X"  # every character right but the last
    wild = b"sct_" + b"z" * 43

    def median_ns(token: bytes) -> float:
        samples = []
        for _ in range(30):
            started = time.perf_counter_ns()
            for _ in range(200):
                table.identify(token)
            samples.append(time.perf_counter_ns() - started)
        return statistics.median(samples)

    median_ns(near), median_ns(wild)  # warm up
    ratios = [median_ns(near) / median_ns(wild) for _ in range(3)]
    # The time depends on the hash of the guess, not on how close the guess is: the same within noise.
    assert 0.67 < statistics.median(ratios) < 1.5, ratios


def test_token_create_prints_a_fresh_token_and_the_line_that_admits_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "create", "ci-dashboard"]) == 0
    first = capsys.readouterr()
    assert cli.main(["token", "create", "ci-dashboard"]) == 0
    second = capsys.readouterr()

    token, file_line = first.out.splitlines()
    assert token.startswith(tokens.TOKEN_PREFIX) and len(token) >= 40
    assert file_line == f"ci-dashboard {hashlib.sha256(token.encode()).hexdigest()}"
    assert parse(file_line, source="t").identify(token.encode()) == Caller("ci-dashboard", digest(token))
    # Shown once: the explanation on stderr never repeats it; and every run makes a new one.
    assert token not in first.err and "SIGHUP" in first.err and "STATUSCACHE_API_TOKENS_FILE" in first.err
    assert second.out.splitlines()[0] != token


def test_token_create_needs_no_settings_database_or_aws(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Settings that would refuse to load, and nothing to reach: token create does not care.
    monkeypatch.setenv("STATUSCACHE_REGIONS", "not a region")
    monkeypatch.setenv("STATUSCACHE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'never.db'}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")

    assert cli.main(["token", "create", "alice"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert not (tmp_path / "never.db").exists()


def test_token_create_refuses_a_name_the_file_could_not_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["token", "create", "two words"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "caller's name" in err


def test_an_admitted_authorization_header_is_remembered_for_its_file_version_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    path.write_text(line("alice", TOKEN) + "\n")
    held = TokenFile(str(path))
    alice, bob = Caller("alice", digest(TOKEN)), Caller("bob", digest(OTHER))
    hashed: list[bytes] = []
    sha256 = hashlib.sha256

    def counted(data: bytes) -> object:
        hashed.append(data)
        return sha256(data)

    monkeypatch.setattr(tokens.hashlib, "sha256", counted)
    header = f"Bearer {TOKEN}".encode()
    assert [held.tokens.bearer(header) for _ in range(3)] == [alice] * 3
    assert len(hashed) == 1  # identified once, then remembered
    # Refusals are never remembered: every one takes identify's constant-time path.
    assert [held.tokens.bearer(f"Bearer {OTHER}".encode()) for _ in range(2)] == [None, None]
    assert len(hashed) == 3
    assert held.tokens.bearer(f"Basic {TOKEN}".encode()) is None
    assert held.tokens.bearer(f"bearer  {TOKEN} ".encode()) == alice
    # A reload revokes what the new file does not hold, remembered or not.
    path.write_text(line("bob", OTHER) + "\n")
    assert held.reload()
    assert held.tokens.bearer(header) is None
    assert held.tokens.bearer(f"Bearer {OTHER}".encode()) == bob
