"""An image's parts: the one rule for "newer", merging a change, the stored JSON form, and rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from service.domain import describe
from service.domain.models import (
    PART_CONFIG,
    PART_IMAGEBUILDER,
    AmiInfo,
    Change,
    ConfigLocation,
    ImagebuilderState,
    Observed,
    Source,
    StackInfo,
    StatusFields,
)
from service.domain.records import Parts, decode_parts, encode_parts, is_newer, merge, render

REGION = "us-east-1"
IMAGE_ID = "rocky9-build"
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
EARLIER = T0 - timedelta(seconds=1)
LATER = T0 + timedelta(seconds=1)

STACK = StackInfo(
    name=IMAGE_ID,
    stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/0000",
    status="CREATE_IN_PROGRESS",
    creation_time=datetime(2024, 5, 1, 11, 0, tzinfo=UTC),
    tags=(("parallelcluster:image_id", IMAGE_ID), ("parallelcluster:version", "3.9.0")),
    status_reason="User Initiated",
)
STACK_FAILED = StackInfo(
    name=IMAGE_ID,
    stack_id=STACK.stack_id,
    status="ROLLBACK_COMPLETE",
    creation_time=STACK.creation_time,
    tags=STACK.tags,
)
AMI = AmiInfo(
    ami_id="ami-0123456789abcdef0",
    state="available",
    tags=(("parallelcluster:image_id", IMAGE_ID), ("parallelcluster:version", "3.9.0")),
    name="rocky9-build 2024-05-01",
    description="AWS ParallelCluster AMI",
    architecture="arm64",
    creation_date="2024-05-01T12:30:00.000Z",
)
IMAGEBUILDER = ImagebuilderState(
    arn=f"arn:aws:imagebuilder:{REGION}:123456789012:image/parallelclusterimage-{IMAGE_ID}/3.9.0/1",
    status="BUILDING",
    reason=None,
)
CONFIG = ConfigLocation(bucket="bucket", key="dir/configs/image-config.yaml", available=True)


def change(**parts: Observed[Any] | None) -> Change:
    return Change(region=REGION, image_id=IMAGE_ID, source=Source.EVENT, observed_at=T0, **parts)


# --- is_newer ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "incoming", "newer"),
    [
        pytest.param(None, Observed(T0, STACK), True, id="nothing-stored"),
        pytest.param(None, Observed(T0, None), True, id="nothing-stored-incoming-absent"),
        pytest.param(Observed(T0, STACK), Observed(LATER, STACK_FAILED), True, id="incoming-newer"),
        pytest.param(Observed(T0, STACK), Observed(T0, STACK_FAILED), True, id="tie-goes-to-incoming"),
        pytest.param(Observed(T0, STACK), Observed(EARLIER, STACK_FAILED), False, id="incoming-older"),
        pytest.param(Observed(T0, STACK), Observed(LATER, None), True, id="newer-absence"),
        pytest.param(Observed(T0, None), Observed(EARLIER, STACK), False, id="older-presence"),
        pytest.param(Observed(T0, STACK), None, False, id="incoming-silent"),
        pytest.param(None, None, False, id="both-silent"),
        pytest.param(
            Observed(T0, STACK),
            Observed(T0.astimezone(timezone(timedelta(hours=-7))), STACK_FAILED),
            True,
            id="same-instant-other-offset",
        ),
        pytest.param(
            Observed(T0, STACK),
            Observed(T0 - timedelta(microseconds=1), STACK_FAILED),
            False,
            id="one-microsecond-older",
        ),
    ],
)
def test_is_newer(stored: Observed[Any] | None, incoming: Observed[Any] | None, newer: bool) -> None:
    assert is_newer(stored, incoming) is newer


# --- merge ------------------------------------------------------------------------------------

FULL = Parts(
    stack=Observed(T0, STACK),
    ami=Observed(T0, AMI),
    imagebuilder=Observed(T0, IMAGEBUILDER),
    config=Observed(T0, CONFIG),
)


@pytest.mark.parametrize("part", ["stack", "ami", "imagebuilder", "config"])
def test_merge_keeps_parts_the_change_is_silent_on(part: str) -> None:
    replacement = {
        "stack": STACK_FAILED,
        "ami": AmiInfo(ami_id="ami-new", state="pending"),
        "imagebuilder": ImagebuilderState(IMAGEBUILDER.arn, "AVAILABLE"),
        "config": ConfigLocation(),
    }[part]

    merged = merge(FULL, change(**{part: Observed(LATER, replacement)}))

    for name in ("stack", "ami", "imagebuilder", "config"):
        expected = Observed(LATER, replacement) if name == part else getattr(FULL, name)
        assert getattr(merged, name) == expected, name


def test_merge_of_an_empty_change_changes_nothing() -> None:
    assert merge(FULL, change()) == FULL


def test_merge_into_nothing_takes_every_part() -> None:
    incoming = change(
        stack=Observed(T0, STACK),
        ami=Observed(T0, AMI),
        imagebuilder=Observed(T0, IMAGEBUILDER),
        config=Observed(T0, CONFIG),
    )

    assert merge(Parts(), incoming) == FULL


@pytest.mark.parametrize(
    ("incoming_time", "applied"),
    [
        pytest.param(EARLIER, False, id="older-is-refused"),
        pytest.param(T0, True, id="equal-time-is-accepted"),
        pytest.param(LATER, True, id="newer-is-accepted"),
    ],
)
@pytest.mark.parametrize("part", ["stack", "ami", "imagebuilder", "config"])
def test_merge_replaces_a_part_only_when_not_older(part: str, incoming_time: datetime, applied: bool) -> None:
    incoming = Observed(incoming_time, None)  # "observed absent" is a value like any other

    merged = merge(FULL, change(**{part: incoming}))

    assert getattr(merged, part) == (incoming if applied else getattr(FULL, part))


def test_older_event_does_not_overwrite_newer_state_but_newer_parts_of_it_apply() -> None:
    incoming = change(stack=Observed(EARLIER, STACK_FAILED), imagebuilder=Observed(LATER, None))

    merged = merge(FULL, incoming)

    assert merged.stack == FULL.stack
    assert merged.imagebuilder == Observed(LATER, None)
    assert merged.ami == FULL.ami
    assert merged.config == FULL.config


# --- encode_parts / decode_parts --------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(Parts(), id="empty"),
        pytest.param(FULL, id="full"),
        pytest.param(Parts(stack=Observed(T0, STACK)), id="stack"),
        pytest.param(Parts(stack=Observed(T0, STACK_FAILED)), id="stack-without-reason"),
        pytest.param(
            Parts(stack=Observed(T0, StackInfo("s", "id", "CREATE_COMPLETE", STACK.creation_time, (), ""))),
            id="stack-empty-reason-no-tags",
        ),
        pytest.param(Parts(ami=Observed(T0, AMI)), id="ami"),
        pytest.param(Parts(ami=Observed(T0, AmiInfo(ami_id="ami-1", state="pending"))), id="ami-minimal"),
        pytest.param(Parts(imagebuilder=Observed(T0, IMAGEBUILDER)), id="imagebuilder"),
        pytest.param(Parts(imagebuilder=Observed(T0, ImagebuilderState())), id="imagebuilder-unknown"),
        pytest.param(
            Parts(imagebuilder=Observed(T0, ImagebuilderState(IMAGEBUILDER.arn, "FAILED", "timeout"))),
            id="imagebuilder-with-reason",
        ),
        pytest.param(Parts(config=Observed(T0, CONFIG)), id="config"),
        pytest.param(Parts(config=Observed(T0, ConfigLocation("b", None, available=False))), id="config-partial"),
        pytest.param(Parts(stack=Observed(T0, None)), id="stack-observed-absent"),
        pytest.param(Parts(ami=Observed(T0, None)), id="ami-observed-absent"),
        pytest.param(Parts(imagebuilder=Observed(T0, None)), id="imagebuilder-observed-absent"),
        pytest.param(Parts(config=Observed(T0, None)), id="config-observed-absent"),
        pytest.param(
            Parts(
                stack=Observed(T0, None),
                ami=Observed(LATER, None),
                imagebuilder=Observed(EARLIER, None),
                config=Observed(T0, None),
            ),
            id="all-observed-absent",
        ),
        pytest.param(
            Parts(stack=Observed(LATER, STACK), ami=Observed(EARLIER, None), imagebuilder=Observed(T0, IMAGEBUILDER)),
            id="mixed-times",
        ),
    ],
)
def test_encode_decode_round_trips_every_part(parts: Parts) -> None:
    assert decode_parts(encode_parts(parts)) == parts


@pytest.mark.parametrize("part", ["stack", "ami", "imagebuilder", "config"])
def test_observed_absent_survives_encoding_as_distinct_from_never_observed(part: str) -> None:
    decoded = decode_parts(encode_parts(Parts(**{part: Observed(T0, None)})))

    assert getattr(decoded, part) == Observed(T0, None)
    assert getattr(decoded, part) is not None


def test_round_trip_keeps_the_instant_of_a_non_utc_time() -> None:
    offset = timezone(timedelta(hours=5, minutes=30))
    stack = StackInfo("s", "id", "CREATE_COMPLETE", datetime(2024, 5, 1, 17, 30, tzinfo=offset))
    parts = Parts(stack=Observed(T0.astimezone(offset), stack))

    decoded = decode_parts(encode_parts(parts))

    assert decoded == parts
    assert decoded.stack is not None and decoded.stack.value is not None
    assert decoded.stack.as_of.utcoffset() == timedelta(0)
    assert decoded.stack.value.creation_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", [None, ""])
def test_decoding_nothing_gives_empty_parts(text: str | None) -> None:
    assert decode_parts(text) == Parts()


def test_encoded_parts_are_json_with_as_of_times() -> None:
    raw = orjson.loads(encode_parts(Parts(stack=Observed(T0, None), config=Observed(LATER, CONFIG))))

    assert raw == {
        "stack": {"asOf": "2024-05-01T12:00:00.123456+00:00", "value": None},
        "ami": None,
        "imagebuilder": None,
        "config": {
            "asOf": "2024-05-01T12:00:01.123456+00:00",
            "value": {"bucket": "bucket", "key": "dir/configs/image-config.yaml", "available": True},
        },
    }


# --- render -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(Parts(stack=Observed(T0, STACK), imagebuilder=Observed(T0, IMAGEBUILDER)), id="stack"),
        pytest.param(Parts(ami=Observed(T0, AMI), stack=Observed(T0, STACK)), id="ami"),
        pytest.param(FULL, id="full"),
    ],
)
def test_render_gives_the_describe_document_as_sorted_json_bytes(parts: Parts) -> None:
    rendered = render(region=REGION, image_id=IMAGE_ID, parts=parts)
    expected = describe.render(
        region=REGION,
        image_id=IMAGE_ID,
        stack=parts.stack_value,
        ami=parts.ami_value,
        imagebuilder=parts.imagebuilder_value,
    )

    assert isinstance(rendered.document, bytes)
    assert rendered.document == orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
    assert orjson.loads(rendered.document) == expected
    assert rendered.fields == describe.status_fields(
        stack=parts.stack_value, ami=parts.ami_value, imagebuilder=parts.imagebuilder_value
    )
    assert rendered.fields.exists


def test_rendered_document_keys_are_sorted_at_every_level() -> None:
    rendered = render(region=REGION, image_id=IMAGE_ID, parts=Parts(ami=Observed(T0, AMI)))

    assert rendered.document is not None
    top_keys = list(orjson.loads(rendered.document))
    ami_keys = list(orjson.loads(rendered.document)["ec2AmiInfo"])
    assert top_keys == sorted(top_keys)
    assert ami_keys == sorted(ami_keys)
    assert rendered.document.startswith(b'{"creationTime":')


def test_render_carries_the_config_location_of_an_existing_image() -> None:
    rendered = render(region=REGION, image_id=IMAGE_ID, parts=FULL)

    assert rendered.config == CONFIG


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param(Parts(), id="never-observed"),
        pytest.param(
            Parts(stack=Observed(T0, None), ami=Observed(T0, None), imagebuilder=Observed(T0, None)),
            id="observed-absent",
        ),
        pytest.param(
            Parts(
                stack=Observed(T0, StackInfo(IMAGE_ID, "id", "DELETE_COMPLETE", T0)),
                imagebuilder=Observed(T0, IMAGEBUILDER),
                config=Observed(T0, CONFIG),
            ),
            id="stack-deleted",
        ),
        pytest.param(Parts(config=Observed(T0, CONFIG)), id="config-only"),
    ],
)
def test_render_gives_none_when_nothing_exists(parts: Parts) -> None:
    rendered = render(region=REGION, image_id=IMAGE_ID, parts=parts)

    assert rendered.document is None
    assert rendered.fields == StatusFields(exists=False)
    assert rendered.config == ConfigLocation()


# --- parts AWS did not answer for -------------------------------------------------------------

REBUILT = StackInfo(
    name=IMAGE_ID,
    stack_id=f"arn:aws:cloudformation:{REGION}:123456789012:stack/{IMAGE_ID}/1111",
    status="CREATE_IN_PROGRESS",
    creation_time=datetime(2024, 5, 2, 9, 0, tzinfo=UTC),
    tags=STACK.tags,
)
STACK_WITH_CONFIG = StackInfo(
    name=IMAGE_ID,
    stack_id=STACK.stack_id,
    status="CREATE_IN_PROGRESS",
    creation_time=STACK.creation_time,
    tags=(*STACK.tags, ("parallelcluster:s3_bucket", "bucket"), ("parallelcluster:s3_image_dir", "dir")),
)
STACK_ELSEWHERE = StackInfo(
    name=IMAGE_ID,
    stack_id=STACK.stack_id,
    status="CREATE_IN_PROGRESS",
    creation_time=STACK.creation_time,
    tags=(*STACK.tags, ("parallelcluster:s3_bucket", "bucket"), ("parallelcluster:s3_image_dir", "other-dir")),
)
UNTAGGED_BUCKET_STACK = StackInfo(
    name=IMAGE_ID,
    stack_id=STACK.stack_id,
    status="CREATE_IN_PROGRESS",
    creation_time=STACK.creation_time,
    tags=(*STACK.tags, ("parallelcluster:s3_image_dir", "dir")),
)


@pytest.mark.parametrize(
    ("before", "incoming_stack", "unknown", "kept"),
    [
        pytest.param(
            IMAGEBUILDER, STACK_FAILED, frozenset({PART_IMAGEBUILDER}), IMAGEBUILDER, id="same-stack-keeps-it"
        ),
        pytest.param(IMAGEBUILDER, REBUILT, frozenset({PART_IMAGEBUILDER}), None, id="rebuilt-stack-drops-it"),
        pytest.param(IMAGEBUILDER, REBUILT, frozenset(), IMAGEBUILDER, id="known-silence-is-not-unknown"),
    ],
)
def test_an_unknown_image_builder_state_is_kept_only_for_the_stack_it_was_read_for(
    before: ImagebuilderState, incoming_stack: StackInfo, unknown: frozenset[str], kept: ImagebuilderState | None
) -> None:
    current = Parts(stack=Observed(EARLIER, STACK), imagebuilder=Observed(EARLIER, before))
    incoming = Change(
        region=REGION, image_id=IMAGE_ID, source=Source.LIVE, observed_at=T0,
        stack=Observed(T0, incoming_stack), unknown=unknown, whole=True,
    )

    merged = merge(current, incoming)

    assert merged.stack_value == incoming_stack
    assert merged.imagebuilder_value == kept


@pytest.mark.parametrize(
    ("stack", "kept"),
    [
        pytest.param(STACK_WITH_CONFIG, True, id="same-object"),
        pytest.param(STACK_ELSEWHERE, False, id="tags-point-elsewhere"),
        pytest.param(UNTAGGED_BUCKET_STACK, True, id="default-bucket-same-key"),
        pytest.param(STACK, False, id="no-image-dir-any-more"),
    ],
)
def test_an_unknown_config_location_is_kept_only_while_the_tags_still_point_at_it(
    stack: StackInfo, kept: bool
) -> None:
    stored_config = ConfigLocation(bucket="bucket", key="dir/configs/image-config.yaml", available=True)
    current = Parts(stack=Observed(EARLIER, STACK_WITH_CONFIG), config=Observed(EARLIER, stored_config))
    incoming = Change(
        region=REGION, image_id=IMAGE_ID, source=Source.RECONCILE, observed_at=T0,
        stack=Observed(T0, stack), unknown=frozenset({PART_CONFIG}), whole=True,
    )

    merged = merge(current, incoming)

    assert merged.config_value == (stored_config if kept else ConfigLocation())
    assert (render(region=REGION, image_id=IMAGE_ID, parts=merged).config == stored_config) is kept


def test_an_unknown_part_of_a_new_image_is_absent_not_invented() -> None:
    incoming = Change(
        region=REGION, image_id=IMAGE_ID, source=Source.LIVE, observed_at=T0, stack=Observed(T0, STACK),
        ami=Observed(T0, None), unknown=frozenset({PART_IMAGEBUILDER, PART_CONFIG}), whole=True,
    )

    rendered = render(region=REGION, image_id=IMAGE_ID, parts=merge(Parts(), incoming))

    assert rendered.document is not None
    document = orjson.loads(rendered.document)
    assert "imagebuilderImageStatus" not in document
    assert rendered.config == ConfigLocation()
