"""What an event means, given what is known about its image: apply a change, refresh the image, or nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.domain import events
from service.domain.models import (
    AmiInfo,
    AmiStatePatch,
    Change,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
    StackStatusPatch,
)
from service.domain.plans import IGNORED_AMI, IGNORED_RESOURCE, Facts, Plan, decide, worth_storing
from service.domain.records import Parts

REGION = "us-east-1"
IMAGE_ID = "Rocky9-Build"  # mixed case: Image Builder's name for it is lower-cased
HINT = IMAGE_ID.lower()
STACK_ID = f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/0000"
OTHER_STACK_ID = f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/1111"
IB_ARN = f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-{HINT}/3.9.0/1"
OTHER_IB_ARN = f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-{HINT}/3.9.0/2"
AMI_ID = "ami-0123456789abcdef0"

T = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)  # the event's time
BEFORE = T - timedelta(seconds=1)
AFTER = T + timedelta(microseconds=250_000)  # a look-up later in the event's (whole) second
NOW = T + timedelta(seconds=5)  # when the facts were read

STACK = StackInfo(
    name=IMAGE_ID,
    stack_id=STACK_ID,
    status="CREATE_IN_PROGRESS",
    creation_time=T - timedelta(hours=1),
    tags=(("parallelcluster:image_id", IMAGE_ID),),
)
AMI = AmiInfo(ami_id=AMI_ID, state="available", tags=(("parallelcluster:image_id", IMAGE_ID),))
BUILDING = ImagebuilderState(arn=IB_ARN, status="BUILDING")


def envelope(detail_type: str) -> events.Envelope:
    return events.Envelope(
        event_id="event-1", detail_type=detail_type, source="aws.test", region=REGION, account="123456789012", time=T
    )


def stack_event(status: str, *, stack_id: str = STACK_ID) -> events.StackStatusEvent:
    return events.StackStatusEvent(
        envelope(events.STACK_STATUS), stack_id=stack_id, stack_name=IMAGE_ID, status=status, status_reason="why"
    )


def resource_event(
    physical_id: str | None = IB_ARN, *, logical_id: str = "ParallelClusterImage"
) -> events.ResourceStatusEvent:
    return events.ResourceStatusEvent(
        envelope(events.RESOURCE_STATUS), stack_id=STACK_ID, stack_name=IMAGE_ID, logical_id=logical_id,
        physical_id=physical_id, resource_type="AWS::ImageBuilder::Image", status="CREATE_COMPLETE",
    )


def imagebuilder_event(status: str = "TESTING") -> events.ImagebuilderStateEvent:
    return events.ImagebuilderStateEvent(
        envelope(events.IMAGEBUILDER_STATE), arn=IB_ARN, status=status, reason=None, image_id_hint=HINT
    )


def ami_event(state: str = "failed") -> events.AmiStateEvent:
    return events.AmiStateEvent(envelope(events.AMI_STATE), ami_id=AMI_ID, state=state)


def applied(**part: Observed[Any]) -> Plan:
    change = Change(
        region=REGION, image_id=IMAGE_ID, source=Source.EVENT, observed_at=NOW, happened_at=T, **part
    )
    return Plan(change=change)


REFRESH = Plan(refresh=(REGION, IMAGE_ID))
NOTHING = Plan()


def refresh_keeping(**part: Observed[Any]) -> Plan:
    """A refresh, with what the event says kept as news in case the look gets no answer."""
    return Plan(refresh=(REGION, IMAGE_ID), news=applied(**part).change)


def stack_news(status: str, *, stack_id: str = STACK_ID) -> Plan:
    return refresh_keeping(stack_status=Observed(T, StackStatusPatch(stack_id, status, "why")))


AMI_NEWS = refresh_keeping(ami_state=Observed(T, AmiStatePatch(AMI_ID, "failed")))


def stack_part(as_of: datetime, status: str = "CREATE_IN_PROGRESS", *, stack_id: str = STACK_ID) -> Facts:
    stack = StackInfo(
        name=IMAGE_ID, stack_id=stack_id, status=status, creation_time=STACK.creation_time, tags=STACK.tags
    )
    return Facts(NOW, parts=Parts(stack=Observed(as_of, stack)))


@pytest.mark.parametrize(
    ("event", "known", "plan"),
    [
        pytest.param(
            stack_event("CREATE_COMPLETE"), stack_part(BEFORE),
            applied(stack_status=Observed(T, StackStatusPatch(STACK_ID, "CREATE_COMPLETE", "why"))),
            id="patch-applies-to-the-stored-stack",
        ),
        pytest.param(
            stack_event("CREATE_COMPLETE"), stack_part(T),
            applied(stack_status=Observed(T, StackStatusPatch(STACK_ID, "CREATE_COMPLETE", "why"))),
            id="patch-at-the-same-time-applies",
        ),
        pytest.param(
            stack_event("CREATE_IN_PROGRESS"), stack_part(AFTER), NOTHING, id="older-repeated-news-needs-nothing"
        ),
        pytest.param(
            stack_event("CREATE_FAILED"), stack_part(AFTER), stack_news("CREATE_FAILED"),
            id="older-news-that-disagrees-is-refreshed",
        ),
        pytest.param(
            stack_event("CREATE_COMPLETE"), Facts(NOW), stack_news("CREATE_COMPLETE"), id="unknown-image-is-refreshed"
        ),
        pytest.param(
            stack_event("CREATE_COMPLETE"), Facts(NOW, parts=Parts(ami=Observed(BEFORE, AMI))),
            stack_news("CREATE_COMPLETE"),
            id="image-without-a-stored-stack-is-refreshed",
        ),
        pytest.param(
            stack_event("CREATE_COMPLETE"), Facts(NOW, parts=Parts(stack=Observed(BEFORE, None))),
            stack_news("CREATE_COMPLETE"),
            id="stack-observed-absent-is-refreshed",
        ),
        pytest.param(
            stack_event("CREATE_IN_PROGRESS", stack_id=OTHER_STACK_ID), stack_part(BEFORE),
            stack_news("CREATE_IN_PROGRESS", stack_id=OTHER_STACK_ID), id="another-stack-of-that-name-is-refreshed",
        ),
    ],
)
def test_stack_status_event(event: events.Event, known: Facts, plan: Plan) -> None:
    assert decide(event, known) == plan


def imagebuilder_part(as_of: datetime, state: ImagebuilderState | None = BUILDING) -> Facts:
    return Facts(NOW, image_id=IMAGE_ID, parts=Parts(stack=Observed(as_of, STACK), imagebuilder=Observed(as_of, state)))


@pytest.mark.parametrize(
    ("event", "known", "plan"),
    [
        pytest.param(
            resource_event(logical_id="BuildLogGroup"), Facts(NOW), Plan(ignored=IGNORED_RESOURCE),
            id="other-logical-id-is-ignored",
        ),
        pytest.param(resource_event(None), Facts(NOW), Plan(ignored=IGNORED_RESOURCE), id="no-physical-id-is-ignored"),
        pytest.param(resource_event(IB_ARN), imagebuilder_part(BEFORE), NOTHING, id="same-arn-needs-nothing"),
        pytest.param(resource_event(OTHER_IB_ARN), imagebuilder_part(BEFORE), REFRESH, id="new-arn-is-refreshed"),
        pytest.param(
            resource_event(IB_ARN), imagebuilder_part(BEFORE, ImagebuilderState()), REFRESH,
            id="stored-without-arn-is-refreshed",
        ),
        pytest.param(resource_event(IB_ARN), Facts(NOW), REFRESH, id="unknown-image-is-refreshed"),
    ],
)
def test_resource_status_event(event: events.Event, known: Facts, plan: Plan) -> None:
    assert decide(event, known) == plan


TESTING = ImagebuilderState(arn=IB_ARN, status="TESTING")


@pytest.mark.parametrize(
    ("event", "known", "plan"),
    [
        pytest.param(
            imagebuilder_event(), Facts(NOW), Plan(refresh=(REGION, HINT)),
            id="unknown-image-is-refreshed-by-the-naming-rule",
        ),
        pytest.param(
            imagebuilder_event("TESTING"), imagebuilder_part(AFTER, TESTING), NOTHING,
            id="older-than-stored-same-status-needs-nothing",
        ),
        pytest.param(
            imagebuilder_event("TESTING"), imagebuilder_part(AFTER, BUILDING), REFRESH,
            id="older-than-stored-different-status-is-refreshed",
        ),
        pytest.param(
            imagebuilder_event("TESTING"), imagebuilder_part(AFTER, None), REFRESH,
            id="older-than-stored-absence-is-refreshed",
        ),
        pytest.param(
            imagebuilder_event("TESTING"), imagebuilder_part(BEFORE), applied(imagebuilder=Observed(T, TESTING)),
            id="newer-state-is-applied",
        ),
        pytest.param(
            imagebuilder_event("TESTING"), imagebuilder_part(T), applied(imagebuilder=Observed(T, TESTING)),
            id="state-at-the-same-time-is-applied",
        ),
        pytest.param(
            imagebuilder_event("TESTING"),
            Facts(NOW, image_id=IMAGE_ID, parts=Parts(stack=Observed(BEFORE, STACK))),
            applied(imagebuilder=Observed(T, TESTING)),
            id="first-state-of-a-known-image-is-applied",
        ),
    ],
)
def test_imagebuilder_state_event(event: events.Event, known: Facts, plan: Plan) -> None:
    assert decide(event, known) == plan


def ami_part(as_of: datetime, ami: AmiInfo = AMI) -> Facts:
    return Facts(NOW, image_id=IMAGE_ID, parts=Parts(ami=Observed(as_of, ami)))


@pytest.mark.parametrize(
    ("event", "known", "plan"),
    [
        pytest.param(
            ami_event("failed"), ami_part(BEFORE), applied(ami_state=Observed(T, AmiStatePatch(AMI_ID, "failed"))),
            id="known-and-patchable-is-applied",
        ),
        pytest.param(ami_event("failed"), ami_part(AFTER), AMI_NEWS, id="known-but-older-is-refreshed"),
        pytest.param(
            ami_event("failed"), ami_part(BEFORE, AmiInfo(ami_id="ami-other", state="available")), AMI_NEWS,
            id="known-but-another-ami-is-refreshed",
        ),
        pytest.param(
            ami_event("failed"), Facts(NOW, image_id=IMAGE_ID, parts=Parts(stack=Observed(BEFORE, STACK))), AMI_NEWS,
            id="known-without-a-stored-ami-is-refreshed",
        ),
        pytest.param(
            ami_event("available"), Facts(NOW, ami=AMI),
            refresh_keeping(ami_state=Observed(T, AmiStatePatch(AMI_ID, "available"))),
            id="unknown-tagged-is-refreshed-by-its-tag",
        ),
        pytest.param(
            ami_event("available"), Facts(NOW, ami=AmiInfo(ami_id=AMI_ID, state="available")),
            Plan(ignored=IGNORED_AMI), id="unknown-untagged-is-ignored",
        ),
        pytest.param(
            ami_event("deregistered"), Facts(NOW), Plan(ignored=IGNORED_AMI), id="unknown-and-gone-is-ignored"
        ),
    ],
)
def test_ami_state_event(event: events.Event, known: Facts, plan: Plan) -> None:
    assert decide(event, known) == plan


def refreshed(*, stack: StackInfo | None = None, ami: AmiInfo | None = None) -> Change:
    return Change(
        region=REGION, image_id=IMAGE_ID, source=Source.LIVE, observed_at=NOW,
        stack=Observed(NOW, stack), ami=Observed(NOW, ami),
    )


UNTAGGED_STACK = StackInfo(name="some-cluster", stack_id=OTHER_STACK_ID, status="CREATE_COMPLETE", creation_time=T)


@pytest.mark.parametrize(
    ("change", "stored", "stored_after"),
    [
        pytest.param(refreshed(stack=STACK), None, True, id="tagged-stack"),
        pytest.param(refreshed(ami=AMI), None, True, id="ami"),
        pytest.param(refreshed(stack=UNTAGGED_STACK), None, False, id="another-kind-of-stack"),
        pytest.param(refreshed(), None, False, id="nothing-there"),
        pytest.param(refreshed(), Parts(stack=Observed(BEFORE, STACK)), True, id="cached-image-now-gone"),
        pytest.param(refreshed(stack=UNTAGGED_STACK), Parts(), True, id="cached-image-whatever-aws-says"),
    ],
)
def test_a_refresh_is_stored_for_images_only(change: Change, stored: Parts | None, stored_after: bool) -> None:
    assert worth_storing(change, stored) is stored_after
