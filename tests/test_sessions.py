"""Session cookies: honoured only as issued, until they expire, and while their token is still in the file."""

from __future__ import annotations

import pytest

from service.api.sessions import COOKIE, MAX_AGE_SECONDS, SessionRefused, Sessions, cookie_value
from service.api.tokens import Caller, Tokens, digest

KEY = bytes(range(32))
ALICE = Caller("alice", digest("sct_alice"))
BOB = Caller("bob", digest("sct_bob"))
NOW = 1_800_000_000.0


def test_a_cookie_names_the_caller_until_it_expires() -> None:
    sessions = Sessions(KEY)
    value = sessions.issue(ALICE, now=NOW)

    session = sessions.verify(value, tokens=Tokens([ALICE, BOB]), now=NOW + MAX_AGE_SECONDS - 1)
    assert session.caller == ALICE and session.expires == NOW + MAX_AGE_SECONDS
    with pytest.raises(SessionRefused) as refused:
        sessions.verify(value, tokens=Tokens([ALICE, BOB]), now=NOW + MAX_AGE_SECONDS)
    assert refused.value.reason == "expired session"


def test_a_cookie_dies_with_its_token() -> None:
    sessions = Sessions(KEY)
    value = sessions.issue(ALICE, now=NOW)
    # alice's token rotated: her new token is in the file, the one the session was issued for is not.
    rotated = Caller("alice", digest("sct_alice_new"))

    with pytest.raises(SessionRefused) as refused:
        sessions.verify(value, tokens=Tokens([rotated, BOB]), now=NOW)
    assert refused.value.reason == "session of a revoked token"


def forge_name(value: str) -> str:
    import base64

    payload, _, mac = value.partition(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).replace(b"alice", b"bob")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "." + mac


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(forge_name, id="name-changed"),
        pytest.param(lambda value: value[:-3], id="mac-cut"),
        pytest.param(lambda value: Sessions(bytes(32)).issue(ALICE, now=NOW), id="another-deployment"),
        pytest.param(lambda value: "", id="empty"),
        pytest.param(lambda value: "alice", id="a-bare-name"),
        pytest.param(lambda value: "x" * 10000, id="huge"),
    ],
)
def test_a_cookie_this_deployment_did_not_issue_is_refused(forge: object) -> None:
    sessions = Sessions(KEY)
    value = forge(sessions.issue(ALICE, now=NOW))  # type: ignore[operator]

    with pytest.raises(SessionRefused) as refused:
        sessions.verify(value, tokens=Tokens([ALICE, BOB]), now=NOW)
    assert refused.value.reason == "forged session"


def test_the_cookie_is_http_only_strict_and_secure_over_https() -> None:
    sessions = Sessions(KEY)
    plain = sessions.set_cookie("v", secure=False).decode()
    assert plain == f"{COOKIE}=v; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"
    assert sessions.set_cookie("v", secure=True).decode() == plain + "; Secure"
    assert Sessions.clear_cookie(secure=False).decode() == f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (b"statuscache_session=abc.def", "abc.def"),
        (b"theme=dark; statuscache_session=abc.def; other=1", "abc.def"),
        (b"theme=dark", None),
        (b"xstatuscache_session=abc", None),
        (b"", None),
    ],
)
def test_the_session_cookie_is_found_among_others(header: bytes, value: str | None) -> None:
    assert cookie_value(header) == value
