"""Deliveries' decisions: the message, its Standard Webhooks signature, what an answer means, the retry schedule,
and when the SSM "latest image" parameter moves."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from standardwebhooks import Webhook as Verifier

from service.domain import deliveries
from service.domain.deliveries import Notice, Retries, Verdict, ssm_moves, webhook_answer

T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = b"s" * 32


def notice(status: str = "BUILD_COMPLETE", *, seq: int = 7, created: str = "2026-05-01T10:00:00.000Z",
           ami: str | None = "ami-new") -> Notice:  # fmt: skip
    document = {"imageId": "img", "imageBuildStatus": status, "creationTime": created}
    if ami:
        document["ec2AmiInfo"] = {"amiId": ami}  # type: ignore[assignment]
    return Notice(
        seq=seq, region="us-east-1", image_id="img", happened_at=T, observed_at=T + timedelta(seconds=1),
        source="event", previous="BUILD_IN_PROGRESS", status=status, document=document,
    )  # fmt: skip


def test_the_message_carries_what_the_issue_lists() -> None:
    data = deliveries.message(notice())["data"]
    assert deliveries.message(notice())["type"] == "image.transition"
    assert data["imageId"] == "img" and data["region"] == "us-east-1" and data["sequence"] == 7
    assert data["time"] == "2026-05-01T12:00:00.000Z"
    assert data["previousImageBuildStatus"] == "BUILD_IN_PROGRESS" and data["imageBuildStatus"] == "BUILD_COMPLETE"
    assert data["image"]["imageId"] == "img"


def test_a_standard_webhooks_verifier_accepts_the_signature() -> None:
    body = deliveries.body(notice())
    now = int(datetime.now(UTC).timestamp())
    headers = deliveries.webhook_headers(secret=KEY, message_id="msg_7", timestamp=now, payload=body)
    verifier = Verifier("whsec_" + base64.b64encode(KEY).decode())
    assert verifier.verify(body, headers) == orjson.loads(body)
    assert headers["webhook-id"] == notice().message_id == "msg_7"


@pytest.mark.parametrize(
    ("status", "retry_after", "verdict", "wait"),
    [
        (200, None, Verdict.DELIVERED, None),
        (204, None, Verdict.DELIVERED, None),
        (410, None, Verdict.DISABLE, None),
        (500, "30", Verdict.RETRY, None),
        (429, "30", Verdict.RETRY, 30.0),
        (503, "Fri, 01 May 2026 12:02:00 GMT", Verdict.RETRY, 120.0),
        (503, "soon", Verdict.RETRY, None),
        (302, None, Verdict.RETRY, None),
    ],
)
def test_what_an_answer_means(status: int, retry_after: str | None, verdict: Verdict, wait: float | None) -> None:
    answer = webhook_answer(status, retry_after=retry_after, now=T)
    assert answer.verdict is verdict and answer.retry_after == wait


def test_retries_start_within_five_seconds_grow_and_give_up_after_a_day() -> None:
    retries = Retries(initial=2.0, maximum=3600.0, give_up=86400.0)
    assert 1.0 <= retries.delay(1, draw=lambda: 0.0) <= retries.delay(1, draw=lambda: 0.999) <= 2.0
    assert retries.delay(5, draw=lambda: 0.999) == pytest.approx(32.0, rel=0.01)
    assert retries.delay(40, draw=lambda: 0.999) <= 3600.0
    assert retries.delay(1, retry_after=90.0) == 90.0
    assert not retries.exhausted(first_failure=T, now=T + timedelta(hours=23))
    assert retries.exhausted(first_failure=T, now=T + timedelta(hours=24))


OLD = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("candidate", "current_value", "current_created", "modified", "moves"),
    [
        (notice(), None, None, None, True),
        (notice(), "ami-new", OLD, OLD, False),
        (notice(), "ami-old", OLD, None, True),
        (notice(), "ami-newer", T, None, False),  # the parameter already points at a newer image
        (notice(), "ami-unknown", None, T - timedelta(hours=1), True),
        (notice(), "ami-unknown", None, T + timedelta(hours=1), False),
        (notice("BUILD_FAILED"), None, None, None, False),  # a failed build never moves it
        (notice(ami=None), None, None, None, False),
    ],
)
def test_the_latest_image_parameter_only_moves_forward(
    candidate: Notice, current_value: str | None, current_created: datetime | None, modified: datetime | None,
    moves: bool,
) -> None:  # fmt: skip
    moved = ssm_moves(candidate, current_value=current_value, current_created=current_created, modified=modified)
    assert moved is moves
