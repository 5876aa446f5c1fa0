"""The bounded memo: a plain dict until full; a new key then starts it over, an existing key is just replaced."""

from __future__ import annotations

import pytest

from service.support.bounded import BoundedDict


def test_holds_up_to_its_bound() -> None:
    memo: BoundedDict[str, int] = BoundedDict(3)
    for index, key in enumerate("abc"):
        memo[key] = index

    assert memo == {"a": 0, "b": 1, "c": 2}
    assert memo.get("b") == 1 and memo.get("z") is None


def test_a_new_key_when_full_starts_over() -> None:
    memo: BoundedDict[str, int] = BoundedDict(3)
    for index, key in enumerate("abc"):
        memo[key] = index

    memo["d"] = 3

    assert memo == {"d": 3}


def test_replacing_a_key_when_full_keeps_the_others() -> None:
    memo: BoundedDict[str, int] = BoundedDict(3)
    for index, key in enumerate("abc"):
        memo[key] = index

    memo["b"] = 10

    assert memo == {"a": 0, "b": 10, "c": 2}


def test_never_holds_more_than_its_bound() -> None:
    memo: BoundedDict[int, int] = BoundedDict(100)
    for key in range(1000):
        memo[key] = key
        assert len(memo) <= 100


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedDict(0)
