"""The ring of recent changes: what it holds, and exactly when it can answer "everything after n"."""

from __future__ import annotations

import pytest

from service.support.ring import Ring


def filled(capacity: int, numbers: list[int], *, start: int = 0) -> Ring[str]:
    ring: Ring[str] = Ring(capacity, start=start)
    for number in numbers:
        ring.append(number, f"item{number}")
    return ring


@pytest.mark.parametrize(
    ("capacity", "numbers", "floor", "last"),
    [
        (3, [], 0, 0),
        (3, [1, 2], 0, 2),
        (3, [1, 2, 3], 0, 3),
        # Full: each new item drops the oldest, and the floor moves up to the dropped number.
        (3, [1, 2, 3, 4], 1, 4),
        (3, [1, 2, 3, 4, 5, 6], 3, 6),
        # Numbers may skip (a sequence number never used): the ring still knows its range.
        (2, [5, 9, 12], 5, 12),
    ],
)
def test_floor_is_the_last_dropped_number(capacity: int, numbers: list[int], floor: int, last: int) -> None:
    ring = filled(capacity, numbers)
    assert (ring.floor, ring.last, len(ring)) == (floor, last, min(capacity, len(numbers)))


@pytest.mark.parametrize(
    ("after", "covers", "since"),
    [
        (0, False, ["item3", "item4", "item5"]),
        (1, False, ["item3", "item4", "item5"]),
        # 2 was dropped: "after 2" is 3, 4, 5, all held.
        (2, True, ["item3", "item4", "item5"]),
        (3, True, ["item4", "item5"]),
        (5, True, []),
        # A client ahead of this ring (it came from a replica that read further): nothing yet, and complete.
        (9, True, []),
    ],
)
def test_since_is_complete_exactly_when_covered(after: int, covers: bool, since: list[str]) -> None:
    ring = filled(3, [1, 2, 3, 4, 5])
    assert ring.covers(after) is covers
    assert ring.since(after) == since


def test_a_fresh_ring_covers_everything_after_its_start() -> None:
    ring: Ring[str] = Ring(10, start=41)
    assert ring.covers(41) and not ring.covers(40)
    assert ring.since(41) == []


@pytest.mark.parametrize("number", [3, 2])
def test_numbers_must_increase(number: int) -> None:
    ring = filled(3, [1, 3])
    with pytest.raises(ValueError, match="does not follow 3"):
        ring.append(number, "again")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Ring(0, start=0)
