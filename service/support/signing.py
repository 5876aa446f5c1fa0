"""Tamper-evident tokens: a payload and an HMAC-SHA256 over it and the context it was issued for.

`sign(payload, context=...)` gives `<payload>.<mac>` (both base64url, no padding); `verify` gives the
payload back only for a token this key signed for that same context (e.g. the query a page token
continues), and raises ValueError for anything else: forged, altered, truncated, or from another
context. Tokens are opaque to clients but not secret: the payload is only encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

MAC_BYTES = 16


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(text: str) -> bytes:
    if not text or len(text) > 4096:
        raise ValueError("not a token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a token") from exc


class Signer:
    def __init__(self, key: bytes, *, purpose: str) -> None:
        if len(key) < 16:
            raise ValueError("a signing key needs at least 16 bytes")
        # One key per purpose, derived: a token issued for one use never verifies for another.
        self._key = hmac.new(key, purpose.encode(), hashlib.sha256).digest()

    def _mac(self, payload: bytes, context: str) -> bytes:
        return hmac.new(self._key, context.encode() + b"\0" + payload, hashlib.sha256).digest()[:MAC_BYTES]

    def sign(self, payload: bytes, *, context: str = "") -> str:
        return f"{_encode(payload)}.{_encode(self._mac(payload, context))}"

    def verify(self, token: str, *, context: str = "") -> bytes:
        encoded_payload, dot, encoded_mac = token.partition(".")
        if not dot:
            raise ValueError("not a token")
        payload, mac = _decode(encoded_payload), _decode(encoded_mac)
        if not hmac.compare_digest(mac, self._mac(payload, context)):
            raise ValueError("not a token this service issued for this request")
        return payload
