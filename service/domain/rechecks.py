"""Pure: rechecks, the durable list of looks at AWS still owed — what owes one, what settles it, when to try again.

AWS answering "it does not exist" is a fact and is stored like any other. AWS not answering
(throttled, 5xx, timeout, reset) is not knowing: nothing is stored as the truth for that part, and
a recheck is owed instead. A recheck is owed about an image (`KIND_IMAGE`: a part a live lookup, a
reconcile pass or a targeted refresh could not read, or a targeted refresh an event asked for that failed)
or about an AMI the cache cannot place yet (`KIND_AMI`: an AMI event whose image only EC2 can name). The
list is a table, so what an event told us survives the message's deletion, a restart and a failover.

A recheck is settled by a whole observation, with nothing unknown, begun no earlier than the recheck was
owed (`settles`); until then it is retried with a bounded exponential backoff (`retry_delay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain.models import Change, Source

KIND_IMAGE = "image"
KIND_AMI = "ami"

Row = dict[str, Any]


@dataclass(frozen=True)
class Recheck:
    """One recheck owed: about `subject` (an image id, or an AMI id for KIND_AMI) in `region`.

    `source` and `happened_at` are what the recheck's change is applied with: an event's recheck keeps the
    event as the source of the transition it brings, and the event's time as when it happened.
    """

    region: str
    kind: str
    subject: str
    requested_at: datetime
    source: Source
    reason: str
    happened_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.region, self.kind, self.subject)


def recheck_for(change: Change) -> Recheck | None:
    """The recheck `change` leaves owed: one when it could not read some part, else none."""
    if not change.unknown:
        return None
    return Recheck(
        region=change.region,
        kind=KIND_IMAGE,
        subject=change.image_id,
        requested_at=change.observed_at,
        source=change.source,
        reason="could not read " + ", ".join(sorted(change.unknown)),
        happened_at=change.happened_at,
    )


def settles(stored: Mapping[str, Any] | None, change: Change) -> bool:
    """Whether `change` settles the stored recheck of its image: a whole observation with nothing unknown,
    begun no earlier than the recheck was owed (a look that began before an event arrived cannot answer it)."""
    return (
        stored is not None
        and change.whole
        and not change.unknown
        and change.observed_at >= stored["requested_at"]
    )


def settled_by_time(stored: Mapping[str, Any] | None, observed_at: datetime) -> bool:
    """Whether a look begun at `observed_at` that found nothing to store settles the stored recheck."""
    return stored is not None and observed_at >= stored["requested_at"]


def row_after(stored: Mapping[str, Any] | None, recheck: Recheck, *, first_try_at: datetime) -> Row:
    """The recheck's row once `recheck` joins what is stored.

    The latest request and event time win (the look must begin after both); an event's source wins over
    a lookup's (the transition it brings is the event's news); the schedule and attempts stay, so news
    arriving during an outage does not reset the backoff.
    """
    if stored is None:
        return {
            "region": recheck.region,
            "kind": recheck.kind,
            "subject": recheck.subject,
            "requested_at": recheck.requested_at,
            "happened_at": recheck.happened_at,
            "source": recheck.source.value,
            "reason": recheck.reason,
            "attempts": 0,
            "due_at": first_try_at,
            "last_error": None,
        }
    happened: datetime | None = stored["happened_at"]
    if recheck.happened_at is not None and (happened is None or recheck.happened_at > happened):
        happened = recheck.happened_at
    event = Source.EVENT.value
    source = event if event in (stored["source"], recheck.source.value) else recheck.source.value
    return {
        **stored,
        "requested_at": max(stored["requested_at"], recheck.requested_at),
        "happened_at": happened,
        "source": source,
        "reason": recheck.reason,
    }


def retry_delay(attempts: int, *, initial: float, maximum: float) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling from `initial`, never above `maximum`."""
    if attempts < 1:
        return min(initial, maximum)
    # Capped before the power grows: thousands of attempts in a long outage must not overflow.
    doubled: float = initial * 2.0 ** min(attempts - 1, 32)
    return min(maximum, doubled)
