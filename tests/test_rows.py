"""One change against a stored row: the rows it writes (image, revision, transition) and what it reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.domain.models import AmiInfo, Change, ConfigLocation, Observed, Source, StackInfo, StatusFields
from service.domain.rows import SERVED_COLUMNS, ApplyResult, Row, Written, apply, status_of

REGION = "us-east-1"
IMAGE_ID = "img"
T = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CONFIG = ConfigLocation(bucket="b", key="k", available=True)


def stack(status: str = "CREATE_IN_PROGRESS", *, tags: tuple[tuple[str, str], ...] = ()) -> StackInfo:
    return StackInfo(
        name=IMAGE_ID,
        stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/1",
        status=status,
        creation_time=T - timedelta(hours=1),
        tags=(("parallelcluster:image_id", IMAGE_ID), *tags),
    )


def change(
    at: datetime,
    *,
    stack_info: StackInfo | None = None,
    ami: AmiInfo | None = None,
    config: ConfigLocation = CONFIG,
    happened_at: datetime | None = None,
) -> Change:
    return Change(
        region=REGION,
        image_id=IMAGE_ID,
        source=Source.RECONCILE,
        observed_at=at,
        stack=Observed(at, stack_info),
        ami=Observed(at, ami),
        config=Observed(at, config),
        happened_at=happened_at,
    )


def stored_after(*changes: Change) -> Row:
    """The image row after applying `changes` in order to nothing, as the store would hold it."""
    row: Row | None = None
    for item in changes:
        written = apply(row, item)
        assert written.image is not None
        row = written.image
    assert row is not None
    return row


def test_a_new_image_writes_its_row_a_revision_and_a_transition() -> None:
    written = apply(None, change(T, stack_info=stack(), happened_at=T - timedelta(seconds=3)))

    assert written.result == ApplyResult(REGION, IMAGE_ID, True, True, True, True, 1, None)
    assert written.image is not None and written.revision is not None and written.transition is not None
    assert written.image["version"] == 1 and written.image["seq"] == 0
    assert (written.image["created_at"], written.image["changed_at"], written.image["confirmed_at"]) == (T, T, T)
    assert (written.image["build_status"], written.image["stack_status"]) == ("BUILD_IN_PROGRESS", "CREATE_IN_PROGRESS")
    assert written.revision == {
        **{column: written.image[column] for column in SERVED_COLUMNS},
        "observed_at": T,
        "happened_at": T - timedelta(seconds=3),
    }
    assert written.transition["happened_at"] == T - timedelta(seconds=3)
    assert written.transition["source"] == "reconcile"
    assert status_of(written.transition) == status_of(written.image)


def test_nothing_is_written_for_an_image_that_never_existed() -> None:
    nothing = ApplyResult(REGION, IMAGE_ID, False, False, False, False, 0, None)

    assert apply(None, change(T)) == Written(None, None, None, nothing)


def test_the_same_news_again_only_confirms() -> None:
    row = stored_after(change(T, stack_info=stack()))

    written = apply(row, change(T + timedelta(seconds=5), stack_info=stack()))

    assert written.result == ApplyResult(REGION, IMAGE_ID, True, False, False, True, 1, None)
    assert written.revision is None and written.transition is None
    assert written.image is not None
    assert (written.image["changed_at"], written.image["confirmed_at"]) == (T, T + timedelta(seconds=5))


@pytest.mark.parametrize(
    ("later", "changed", "transitioned"),
    [
        pytest.param({"stack_info": stack("CREATE_COMPLETE")}, True, True, id="status-change"),
        pytest.param({"stack_info": stack(tags=(("team", "hpc"),))}, True, False, id="document-change-only"),
        pytest.param({"stack_info": stack(), "config": ConfigLocation()}, True, False, id="config-change-only"),
        pytest.param({"stack_info": None}, True, True, id="gone"),
        pytest.param({"stack_info": stack()}, False, False, id="no-change"),
    ],
)
def test_what_a_later_change_writes(later: dict[str, Any], changed: bool, transitioned: bool) -> None:
    row = stored_after(change(T, stack_info=stack()))

    written = apply(row, change(T + timedelta(seconds=1), **later))

    assert (written.result.changed, written.result.transitioned) == (changed, transitioned)
    assert written.result.version == (2 if changed else 1)
    assert (written.revision is not None, written.transition is not None) == (changed, transitioned)
    assert written.image is not None
    assert written.image["changed_at"] == (T + timedelta(seconds=1) if changed else T)


def test_a_gone_image_keeps_its_row_without_a_document() -> None:
    row = stored_after(change(T, stack_info=stack()))

    written = apply(row, change(T + timedelta(seconds=1)))

    assert written.image is not None and written.transition is not None
    assert written.image["exists"] is False and written.image["document"] is None
    assert status_of(written.transition) == StatusFields(exists=False)
    assert written.result.stored and not written.result.exists


def test_an_older_observation_changes_nothing_and_confirms_nothing() -> None:
    row = stored_after(change(T, stack_info=stack("CREATE_COMPLETE")))

    written = apply(row, change(T - timedelta(minutes=1), stack_info=stack("CREATE_IN_PROGRESS")))

    assert not written.result.changed and not written.result.transitioned
    assert written.image is not None
    assert written.image["stack_status"] == "CREATE_COMPLETE"
    assert written.image["confirmed_at"] == T


def test_links_and_part_times_follow_the_merged_parts() -> None:
    ami = AmiInfo(ami_id="ami-1", state="available", tags=(("parallelcluster:image_id", IMAGE_ID),))

    written = apply(None, change(T, stack_info=stack(), ami=ami))

    assert written.image is not None
    assert written.image["ami_id"] == "ami-1" and written.image["stack_id"] == stack().stack_id
    assert written.image["stack_as_of"] == written.image["ami_as_of"] == written.image["config_as_of"] == T
    assert written.image["imagebuilder_as_of"] is None and written.image["imagebuilder_arn"] is None


@pytest.mark.parametrize(
    ("steps", "since"),
    [
        pytest.param([("CREATE_IN_PROGRESS", 0)], 0, id="new-image"),
        # Image Builder moving on, or a reason changing, is not a new build status.
        pytest.param([("CREATE_IN_PROGRESS", 0), ("UPDATE_IN_PROGRESS", 30)], 0, id="same-build-status"),
        pytest.param([("CREATE_IN_PROGRESS", 0), ("CREATE_COMPLETE", 40)], 40, id="new-build-status"),
        pytest.param(
            [("CREATE_IN_PROGRESS", 0), ("ROLLBACK_IN_PROGRESS", 20), ("ROLLBACK_COMPLETE", 50)], 20,
            id="failed-stays-failed",
        ),
        pytest.param([("CREATE_IN_PROGRESS", 0), (None, 60)], 60, id="gone"),
    ],
)
def test_status_since_is_when_the_current_build_status_began(
    steps: list[tuple[str | None, int]], since: int
) -> None:
    # Each change happened (AWS's time) a minute before the service observed it.
    changes = [
        change(
            T + timedelta(seconds=seconds, minutes=1),
            stack_info=stack(status) if status else None,
            happened_at=T + timedelta(seconds=seconds),
        )
        for status, seconds in steps
    ]
    assert stored_after(*changes)["status_since"] == T + timedelta(seconds=since)
