"""Every error the service raises on purpose is in the tree of service.errors, with the answer it maps to."""

from __future__ import annotations

import pytest

from service import errors
from service.domain import events


def test_the_tree_in_the_docstring_names_every_error_class() -> None:
    classes = {
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, Exception)
    }
    assert classes == {name for name in classes if name in (errors.__doc__ or "")}
    assert all(issubclass(getattr(errors, name), errors.StatusCacheError) for name in classes)


def test_an_unreadable_event_is_a_service_error() -> None:
    with pytest.raises(errors.MalformedEvent) as raised:
        events.parse("not json")
    assert isinstance(raised.value, errors.StatusCacheError)


def test_a_token_we_did_not_issue_is_a_400_with_pclusters_wording() -> None:
    refused = errors.BadToken()
    assert isinstance(refused, errors.BadRequest)
    assert (refused.status_code, refused.message) == (400, "Bad Request: nextToken is not one this service issued")
