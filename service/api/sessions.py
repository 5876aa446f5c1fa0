"""Browser sessions: the `statuscache_session` cookie, what it says (caller, token fingerprint, expiry), and its check.

A browser's EventSource cannot send an Authorization header, so a caller with a token trades it once
(`POST /v3/session`) for this cookie, which the browser then sends with every same-origin request,
the change stream included. The cookie is signed with the deployment's session key (shared by every
replica, see service.store.keys), names the token it was issued for by a fingerprint of its digest,
and is honoured only until it expires and only while that token is still in the tokens file: revoking
a token (and SIGHUP) ends its sessions too. It is HttpOnly (page scripts cannot read it) and
SameSite=Strict (other sites cannot make a browser send it).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.api.tokens import NAME_PATTERN, Caller, Tokens
from service.support.signing import Signer

COOKIE = "statuscache_session"
KEY_NAME = "session"
PURPOSE = "session"
MAX_AGE_SECONDS = 43200


class SessionRefused(ValueError):
    """A cookie this deployment did not issue, altered, expired, or for a token no longer in the file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    caller: Caller
    expires: int


class Sessions:
    def __init__(self, key: bytes, *, max_age: int = MAX_AGE_SECONDS) -> None:
        self._signer = Signer(key, purpose=PURPOSE)
        self.max_age = max_age

    def issue(self, caller: Caller, *, now: float) -> str:
        expires = int(now) + self.max_age
        return self._signer.sign(f"{caller.name} {caller.fingerprint} {expires}".encode(), context=COOKIE)

    def verify(self, value: str, *, tokens: Tokens, now: float) -> Session:
        """The session `value` stands for; SessionRefused (with a reason for the log) otherwise."""
        try:
            payload = self._signer.verify(value, context=COOKIE).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise SessionRefused("forged session") from exc
        name, fingerprint, expires = _fields(payload)
        if expires <= now:
            raise SessionRefused("expired session")
        caller = tokens.by_fingerprint(fingerprint)
        if caller is None or caller.name != name:
            raise SessionRefused("session of a revoked token")
        return Session(caller=caller, expires=expires)

    def set_cookie(self, value: str, *, secure: bool) -> bytes:
        return _cookie(value, max_age=self.max_age, secure=secure)

    @staticmethod
    def clear_cookie(*, secure: bool) -> bytes:
        return _cookie("", max_age=0, secure=secure)


def _fields(payload: str) -> tuple[str, str, int]:
    # Only this module writes payloads, and only a valid signature gets here; still, read it defensively.
    parts = payload.split(" ")
    if len(parts) != 3 or not NAME_PATTERN.fullmatch(parts[0]) or not parts[2].isdigit():
        raise SessionRefused("forged session")
    return parts[0], parts[1], int(parts[2])


def _cookie(value: str, *, max_age: int, secure: bool) -> bytes:
    attributes = f"{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    return (attributes + "; Secure" if secure else attributes).encode()


def cookie_value(header: bytes) -> str | None:
    """The session cookie's value in a Cookie header, or None."""
    prefix = COOKIE.encode() + b"="
    for part in header.split(b";"):
        part = part.strip()
        if part.startswith(prefix):
            return part[len(prefix) :].decode("latin-1")
    return None
