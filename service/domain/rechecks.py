"""Pure: rechecks, the durable list of looks at AWS still owed — what owes one, what settles it, when to try again.

AWS answering "it does not exist" is a fact and is stored like any other. AWS not answering
(throttled, 5xx, timeout, reset) is not knowing: nothing is stored as the truth for that part, and
a recheck is owed instead. A recheck is owed about an image (`KIND_IMAGE`: a part a live lookup, a
reconcile pass or a targeted refresh could not read, or a targeted refresh an event asked for that failed)
or about an AMI the cache cannot place yet (`KIND_AMI`: an AMI event whose image only EC2 can name). The
list is a table, so what an event told us survives the message's deletion, a restart and a failover.

A recheck is settled by a whole observation, with nothing unknown, begun no earlier than the recheck was
owed (`settles`); until then it is retried with a bounded exponential backoff (`retry_delay`).

An event about an image the cache does not hold yet (its first reconcile pass has not written it) owes a
look, but it also said something: a stack's status, an AMI's state, at the event's time. That news is
kept with the recheck (`news`, `combined_news`) and merged into the image by the write that stores it,
whichever comes first, the event or that write, by the one rule for "newer" (service.domain.records).
The recheck stays owed for what the event could not say (tags, reasons, the Image Builder image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from service.domain import records
from service.domain.models import AmiStatePatch, Change, Observed, Source, StackStatusPatch
from service.support.clock import as_utc

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


# --- an event's news, waiting for its image --------------------------------------------------------


def news(change: Change) -> Change | None:
    """What of an event's change can wait for its image: its stack status and AMI state patches (each applies
    only to the same stack or AMI, by id, so nothing is guessed about an image not seen yet); None if neither."""
    if change.stack_status is None and change.ami_state is None:
        return None
    return Change(
        region=change.region, image_id=change.image_id, source=Source.EVENT, observed_at=change.observed_at,
        stack_status=change.stack_status, ami_state=change.ami_state, happened_at=change.happened_at,
    )


def supersedes(change: Change, news: Change) -> bool:
    """Whether `change` says all that `news` said, and later: a whole look with nothing unknown, begun no
    earlier than the news was heard (the look that settles the recheck, `settles`, by the same measure)."""
    return change.whole and not change.unknown and change.observed_at >= news.observed_at


def combined_news(held: Change | None, incoming: Change) -> Change:
    """The news of two events about one image: per part the newer (`records.is_newer`), the later event time."""
    if held is None:
        return incoming
    happened = max(held.happened_at or held.observed_at, incoming.happened_at or incoming.observed_at)
    return replace(
        held,
        observed_at=max(held.observed_at, incoming.observed_at),
        happened_at=happened,
        stack_status=incoming.stack_status if records.is_newer(held.stack_status, incoming.stack_status)
        else held.stack_status,
        ami_state=incoming.ami_state if records.is_newer(held.ami_state, incoming.ami_state) else held.ami_state,
    )


def encode_news(change: Change) -> str:
    """The JSON form of news, for the rechecks table's `news` column."""
    document: dict[str, Any] = {
        "observedAt": as_utc(change.observed_at).isoformat(),
        "happenedAt": as_utc(change.happened_at or change.observed_at).isoformat(),
    }
    if change.stack_status is not None and change.stack_status.value is not None:
        patch = change.stack_status.value
        document["stackStatus"] = {
            "asOf": as_utc(change.stack_status.as_of).isoformat(), "stackId": patch.stack_id,
            "status": patch.status, "reason": patch.status_reason,
        }
    if change.ami_state is not None and change.ami_state.value is not None:
        document["amiState"] = {
            "asOf": as_utc(change.ami_state.as_of).isoformat(), "amiId": change.ami_state.value.ami_id,
            "state": change.ami_state.value.state,
        }
    return orjson.dumps(document).decode()


def decode_news(*, region: str, image_id: str, text: str) -> Change:
    raw = orjson.loads(text)
    stack = raw.get("stackStatus")
    ami = raw.get("amiState")
    return Change(
        region=region,
        image_id=image_id,
        source=Source.EVENT,
        observed_at=as_utc(raw["observedAt"]),
        happened_at=as_utc(raw["happenedAt"]),
        stack_status=(
            Observed(as_utc(stack["asOf"]), StackStatusPatch(stack["stackId"], stack["status"], stack["reason"]))
            if stack else None
        ),
        ami_state=Observed(as_utc(ami["asOf"]), AmiStatePatch(ami["amiId"], ami["state"])) if ami else None,
    )
