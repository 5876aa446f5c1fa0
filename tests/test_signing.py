"""Tamper-evident tokens: only what this key signed, for this purpose and context, verifies."""

from __future__ import annotations

import pytest

from service.support.signing import Signer

KEY = bytes(range(32))


def test_a_token_verifies_for_the_context_it_was_signed_for() -> None:
    signer = Signer(KEY, purpose="page")
    token = signer.sign(b'{"after":"img-7"}', context="AVAILABLE/us-east-1")
    assert signer.verify(token, context="AVAILABLE/us-east-1") == b'{"after":"img-7"}'


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda token: token.replace(".", "x.", 1), id="payload-altered"),
        pytest.param(lambda token: token[:-2], id="mac-truncated"),
        pytest.param(lambda token: token.split(".")[0], id="no-mac"),
        pytest.param(lambda token: "eyJhZnRlciI6IngifQ", id="unsigned-old-style"),
        pytest.param(lambda token: "", id="empty"),
        pytest.param(lambda token: "%%%.%%%", id="not-base64"),
        pytest.param(lambda token: "a" * 5000 + "." + "b", id="huge"),
    ],
)
def test_anything_else_is_refused(forge: object) -> None:
    signer = Signer(KEY, purpose="page")
    token = signer.sign(b"[1]", context="c")
    with pytest.raises(ValueError):
        signer.verify(forge(token), context="c")  # type: ignore[operator]


def test_a_token_for_another_context_purpose_or_key_is_refused() -> None:
    token = Signer(KEY, purpose="page").sign(b"[1]", context="FAILED")
    with pytest.raises(ValueError):
        Signer(KEY, purpose="page").verify(token, context="PENDING")
    with pytest.raises(ValueError):
        Signer(KEY, purpose="session").verify(token, context="FAILED")
    with pytest.raises(ValueError):
        Signer(bytes(32), purpose="page").verify(token, context="FAILED")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Signer(b"short", purpose="page")
