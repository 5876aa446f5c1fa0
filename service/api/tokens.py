"""The API's callers: the tokens file (`NAME SHA256HEX` lines), who a presented token belongs to, and new tokens.

The file never holds a token, only the lowercase hex SHA-256 of each, so reading it (or a backup of it)
gives nobody a way in. A caller may have several lines (a token being rotated in beside the old one).
A presented token is hashed and the hash looked up; it is never compared with anything itself, and the
final comparison of the hashes is constant-time whether or not the lookup found one, so the time a
check takes says nothing about how close a guess was.

Failure mode: a bad file refuses (ConfigurationError naming the file and line, never echoing the line:
it could be a token pasted by mistake). On reload (SIGHUP) a bad file keeps the tokens already loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import ConfigurationError

log = logging.getLogger(__name__)

# A prefix makes a leaked token recognisable to secret scanners; 32 random bytes make it unguessable.
TOKEN_PREFIX = "sct_"
TOKEN_BYTES = 32
# Caller names end up in logs and in session cookies: a conservative alphabet keeps both unambiguous.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
NAME_RULE = "a caller's name is 1 to 64 of A-Z a-z 0-9 . _ @ - (starting with a letter or digit)"
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# Longer than any token we mint by far; a longer one is refused without hashing it.
MAX_TOKEN_BYTES = 512
# Enough of a token's digest to name it in a session cookie (64 bits), not enough to matter if read.
FINGERPRINT_CHARS = 16
_NO_DIGEST = "0" * 64


def mint() -> str:
    """A new random token (URL- and header-safe)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: bytes | str) -> str:
    """The lowercase hex SHA-256 the tokens file holds for `token`."""
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def file_line(name: str, token: str) -> str:
    """The tokens-file line for `token`, belonging to the caller `name`."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigurationError(NAME_RULE)
    return f"{name} {digest(token)}"


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    digest: str

    @property
    def fingerprint(self) -> str:
        return self.digest[:FINGERPRINT_CHARS]


ADMITTED_MAX_ENTRIES = 1024


class Tokens:
    """The callers one version of the tokens file names, by the digests of their tokens."""

    def __init__(self, callers: list[Caller]) -> None:
        self._by_digest = {caller.digest: caller for caller in callers}
        self._by_fingerprint = {caller.fingerprint: caller for caller in callers}
        self.names = frozenset(caller.name for caller in callers)
        # Authorization headers that named a caller, and whom: see `bearer`.
        self._admitted: dict[bytes, Caller] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, token: bytes) -> Caller | None:
        """Who `token` belongs to, or None."""
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None
        presented = hashlib.sha256(token).hexdigest()
        caller = self._by_digest.get(presented)
        # The same comparison whether or not the lookup found a caller (a miss compares with a dummy).
        matches = hmac.compare_digest(presented, caller.digest if caller is not None else _NO_DIGEST)
        return caller if matches and caller is not None else None

    def bearer(self, authorization: bytes) -> Caller | None:
        """Who an Authorization header (`Bearer <token>`) names, or None.

        A header that named a caller is remembered, so the dashboards' polling does not hash the same token on every
        request (a third of a cached answer's cost): only headers `identify` accepted, only for this version of the
        file (a reload makes new Tokens, so a revoked token is never remembered past it), at most ADMITTED_MAX_ENTRIES
        of them. A header that names nobody always takes `identify`'s constant-time path; the lookup of one that was
        admitted is a dict's, by a hash keyed per process, which tells an outsider nothing about a token's bytes.
        """
        caller = self._admitted.get(authorization)
        if caller is not None:
            return caller
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        caller = self.identify(token.strip())
        if caller is not None:
            if len(self._admitted) >= ADMITTED_MAX_ENTRIES:
                self._admitted.clear()
            self._admitted[authorization] = caller
        return caller

    def holds(self, caller: Caller) -> bool:
        """Whether the token `caller` was identified by is (still) in this version of the file."""
        return self._by_digest.get(caller.digest) == caller

    def by_fingerprint(self, fingerprint: str) -> Caller | None:
        """The caller whose token has this fingerprint, while that token is still in the file."""
        return self._by_fingerprint.get(fingerprint)


def parse(text: str, *, source: str) -> Tokens:
    """The tokens in a file's text: `NAME SHA256HEX` per line; blank lines and lines starting with # ignored."""
    callers: list[Caller] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        # Never quote the line: a token pasted here by mistake must not reach a log or a terminal.
        if len(fields) != 2 or not DIGEST_PATTERN.fullmatch(fields[1]):
            raise ConfigurationError(
                f"{source} line {number}: expected NAME and the lowercase hex SHA-256 of the caller's token "
                "(the file never holds a token itself; `statuscache token create NAME` prints the line to add)"
            )
        name, hexdigest = fields
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigurationError(f"{source} line {number}: {NAME_RULE}")
        if hexdigest in seen:
            raise ConfigurationError(f"{source} line {number}: the same token digest as line {seen[hexdigest]}")
        seen[hexdigest] = number
        callers.append(Caller(name=name, digest=hexdigest))
    return Tokens(callers)


def load(path: str) -> Tokens:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigurationError(
            f"STATUSCACHE_API_TOKENS_FILE: cannot read {path} ({reason}); create it with lines from "
            "`statuscache token create NAME`, or unset it (and set STATUSCACHE_ALLOW_ANONYMOUS=1 when serving "
            "beyond loopback) to serve anonymously"
        ) from exc
    return parse(text, source=path)


class TokenFile:
    """The tokens file as the service holds it: loaded at start, re-read on `reload()` (SIGHUP)."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Called after each reload (in the event loop's thread): Authentication ends what revoked callers hold open.
        self.listeners: list[Callable[[], None]] = []
        self.tokens = load(path)
        log.info("tokens file %s: %d tokens for %d callers", path, len(self.tokens), len(self.tokens.names))
        if not len(self.tokens):
            log.warning("%s names no callers: every protected request will be refused", path)

    def reload(self) -> bool:
        """Re-read the file; a file that cannot be read or parsed keeps the tokens in force. True if reloaded."""
        try:
            tokens = load(self.path)
        except ConfigurationError as exc:
            log.error("tokens file not reloaded, the %d tokens loaded before stay in force: %s", len(self.tokens), exc)
            return False
        self.tokens = tokens
        log.info("tokens file %s reloaded: %d tokens for %d callers", self.path, len(tokens), len(tokens.names))
        for listener in self.listeners:
            listener()
        return True
