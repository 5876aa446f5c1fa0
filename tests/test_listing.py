"""pcluster's ListImages entries: the AMI's summary for AVAILABLE, the stack's for PENDING and FAILED."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.domain import status
from service.domain.listing import FAILED_STACK_STATUSES, IMAGE_STATUS_FILTERS, PENDING_STACK_STATUSES, summary
from service.domain.models import AmiInfo, Observed, StackInfo
from service.domain.records import Parts

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/img/1"


def parts(*, stack_status: str | None = None, ami: bool = False, version: str | None = "3.9.0") -> Parts:
    tags = (("parallelcluster:version", version),) if version else ()
    return Parts(
        stack=Observed(T, StackInfo("img", STACK_ID, stack_status, T, tags)) if stack_status else None,
        ami=Observed(T, AmiInfo("ami-1", "available", tags)) if ami else None,
    )


@pytest.mark.parametrize(
    ("image_status", "stored", "expected"),
    [
        pytest.param(
            "AVAILABLE", parts(ami=True, stack_status="DELETE_FAILED"),
            {"imageId": "img", "imageBuildStatus": "BUILD_COMPLETE", "ec2AmiInfo": {"amiId": "ami-1"},
             "region": "us-east-1", "version": "3.9.0"},
            id="available-is-the-amis",
        ),
        pytest.param(
            "PENDING", parts(stack_status="CREATE_IN_PROGRESS"),
            {"imageId": "img", "imageBuildStatus": "BUILD_IN_PROGRESS",
             "cloudformationStackStatus": "CREATE_IN_PROGRESS", "cloudformationStackArn": STACK_ID,
             "region": "us-east-1", "version": "3.9.0"},
            id="pending-is-the-stacks",
        ),
        pytest.param(
            "FAILED", parts(stack_status="DELETE_FAILED", version=None),
            {"imageId": "img", "imageBuildStatus": "DELETE_FAILED", "cloudformationStackStatus": "DELETE_FAILED",
             "cloudformationStackArn": STACK_ID, "region": "us-east-1"},
            id="failed-without-version-omits-it",
        ),
    ],
)
def test_summary(image_status: str, stored: Parts, expected: dict[str, object]) -> None:
    assert summary(image_id="img", parts=stored, image_status=image_status, region="us-east-1") == expected


def test_the_filters_are_pclusters() -> None:
    assert IMAGE_STATUS_FILTERS == ("AVAILABLE", "PENDING", "FAILED")
    assert set(PENDING_STACK_STATUSES) | set(FAILED_STACK_STATUSES) <= set(status.BUILD_STATUS_BY_STACK_STATUS)
    assert not set(PENDING_STACK_STATUSES) & set(FAILED_STACK_STATUSES)
