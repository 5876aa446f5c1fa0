"""Pure: what a subscription is sent for one transition (`Notice`), how a webhook is signed (Standard Webhooks),
what a sink's answer means, when to try again, and when an SSM "latest image" parameter moves.

Delivery is at least once, in change order: a subscription's cursor over the change sequence (the transitions'
ids) moves only after the sink accepted, so a crash sends again what it had not recorded as sent. Every attempt
of one transition carries the same `webhook-id` (`msg_<sequence>`), the receiver's idempotency key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from functools import cached_property
from typing import Any

import orjson

from service.domain.subscriptions import GONE

# Standard Webhooks' `type`: one kind of message, the fields of `data` say which change.
MESSAGE_TYPE = "image.transition"


@dataclass(frozen=True)
class Notice:
    """One transition as it is told: `seq` the change sequence, `status` the imageBuildStatus it reached (GONE:
    the image no longer exists), `previous` the one before (None: the first the cache has of the image), and the
    describe document as it is now (None when the image is gone)."""

    seq: int
    region: str
    image_id: str
    happened_at: datetime
    observed_at: datetime
    source: str
    previous: str | None
    status: str
    document: dict[str, Any] | None

    @cached_property
    def body(self) -> bytes:
        return orjson.dumps(message(self))

    @property
    def message_id(self) -> str:
        """Stable across every attempt and every replica: the receiver's idempotency key."""
        return f"msg_{self.seq}"

    @property
    def ami_id(self) -> str | None:
        ami = (self.document or {}).get("ec2AmiInfo") or {}
        value = ami.get("amiId")
        return value if isinstance(value, str) else None

    @property
    def created(self) -> datetime | None:
        document = self.document or {}
        # The AMI's creation time when the image has one, else its stack's (as describe shows them).
        raw = document.get("creationTime") or document.get("cloudformationStackCreationTime")
        if not isinstance(raw, str):
            return None
        try:
            return datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message(notice: Notice) -> dict[str, Any]:
    """The JSON sent (a webhook's body, an SNS message): Standard Webhooks' {"type", "timestamp", "data"}."""
    data: dict[str, Any] = {
        "imageId": notice.image_id,
        "region": notice.region,
        "sequence": notice.seq,
        "time": _iso(notice.happened_at),
        "observedTime": _iso(notice.observed_at),
        "source": notice.source,
        "previousImageBuildStatus": notice.previous,
        "imageBuildStatus": notice.status,
        "gone": notice.status == GONE,
        "image": notice.document,
    }
    return {"type": MESSAGE_TYPE, "timestamp": _iso(notice.happened_at), "data": data}


def body(notice: Notice) -> bytes:
    """The message's bytes: made once per notice, however many subscriptions it is sent to."""
    return notice.body


def signature(*, secret: bytes, message_id: str, timestamp: int, payload: bytes) -> str:
    """`webhook-signature`: v1, and the base64 HMAC-SHA256 of `id.timestamp.body` with the secret."""
    signed = f"{message_id}.{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def webhook_headers(*, secret: bytes, message_id: str, timestamp: int, payload: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (its timestamp is the attempt's, the id the notice's)."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret=secret, message_id=message_id, timestamp=timestamp, payload=payload),
    }


class Verdict(Enum):
    DELIVERED = "delivered"
    # Not accepted this time: try again later (after `retry_after` if the sink said so).
    RETRY = "retry"
    # The sink said never again (HTTP 410 Gone): the subscription is disabled.
    DISABLE = "disable"


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    error: str | None = None
    retry_after: float | None = None


def webhook_answer(status: int, *, retry_after: str | None, now: datetime) -> Answer:
    """What a receiver's HTTP answer means: 2xx accepted; 410 never again; else again later, no sooner than
    its Retry-After on 429 and 503."""
    if 200 <= status < 300:
        return Answer(Verdict.DELIVERED)
    if status == 410:
        return Answer(Verdict.DISABLE, error="the receiver answered 410 Gone: disabled")
    wait = parse_retry_after(retry_after, now=now) if status in (429, 503) else None
    return Answer(Verdict.RETRY, error=f"the receiver answered HTTP {status}", retry_after=wait)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class Retries:
    """The schedule after failures: doubling from `initial` up to `maximum` between attempts, each up to half
    shorter at random (so replicas and subscriptions that failed together spread out), given up (dead-lettered)
    once the first failure is `give_up` old."""

    initial: float
    maximum: float
    give_up: float

    def delay(self, attempts: int, *, retry_after: float | None = None, draw: Callable[[], float] = random.random
              ) -> float:  # fmt: skip
        """Seconds before the next attempt after `attempts` failed ones; never before the sink's Retry-After."""
        bounded = min(self.maximum, self.initial * 2.0 ** min(max(attempts, 1) - 1, 40))
        jittered = bounded * (0.5 + 0.5 * draw())
        return max(jittered, retry_after or 0.0)

    def exhausted(self, *, first_failure: datetime, now: datetime) -> bool:
        return now - first_failure >= timedelta(seconds=self.give_up)


def ssm_moves(
    notice: Notice, *, current_value: str | None, current_created: datetime | None, modified: datetime | None
) -> bool:
    """Whether a BUILD_COMPLETE image moves the "latest image" parameter to its AMI: when the parameter is unset,
    or points at an image created before this one; for an AMI the cache does not know, when this image completed
    after the parameter was last written. A failed build is never BUILD_COMPLETE, so it never moves it."""
    if notice.status != "BUILD_COMPLETE" or notice.ami_id is None:
        return False
    if current_value is None:
        return True
    if current_value == notice.ami_id:
        return False
    created = notice.created
    if current_created is not None and created is not None:
        return created > current_created
    return modified is None or notice.happened_at > modified
