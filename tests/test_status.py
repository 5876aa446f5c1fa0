"""pcluster's stack status -> imageBuildStatus table, and which stack statuses are settled or visible to describe."""

from __future__ import annotations

import pytest

from service.domain import status

# One row per CloudFormation stack status, with the imageBuildStatus pcluster's describe-image reports for it.
STACK_STATUS_TABLE = [
    ("CREATE_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("UPDATE_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("UPDATE_ROLLBACK_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("REVIEW_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("IMPORT_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("IMPORT_ROLLBACK_IN_PROGRESS", "BUILD_IN_PROGRESS"),
    ("ROLLBACK_IN_PROGRESS", "BUILD_FAILED"),
    ("CREATE_FAILED", "BUILD_FAILED"),
    ("ROLLBACK_FAILED", "BUILD_FAILED"),
    ("ROLLBACK_COMPLETE", "BUILD_FAILED"),
    ("UPDATE_ROLLBACK_FAILED", "BUILD_FAILED"),
    ("UPDATE_ROLLBACK_COMPLETE", "BUILD_FAILED"),
    ("IMPORT_ROLLBACK_FAILED", "BUILD_FAILED"),
    ("IMPORT_ROLLBACK_COMPLETE", "BUILD_FAILED"),
    ("CREATE_COMPLETE", "BUILD_COMPLETE"),
    ("UPDATE_COMPLETE", "BUILD_COMPLETE"),
    ("IMPORT_COMPLETE", "BUILD_COMPLETE"),
    ("DELETE_IN_PROGRESS", "DELETE_IN_PROGRESS"),
    ("DELETE_FAILED", "DELETE_FAILED"),
    ("DELETE_COMPLETE", "DELETE_COMPLETE"),
]


@pytest.mark.parametrize(("stack_status", "expected"), STACK_STATUS_TABLE)
def test_stack_status_maps_to_the_build_status_in_the_design_table(stack_status: str, expected: str) -> None:
    assert status.build_status(stack_status) == expected


def test_the_mapping_covers_exactly_the_design_table() -> None:
    assert status.BUILD_STATUS_BY_STACK_STATUS == dict(STACK_STATUS_TABLE)


def test_rollback_complete_is_build_failed() -> None:
    assert status.build_status("ROLLBACK_COMPLETE") == "BUILD_FAILED"


@pytest.mark.parametrize(
    "stack_status",
    ["", "UNKNOWN_STATUS", "create_complete", "CREATE_COMPLETE ", "UPDATE_FAILED", "BUILD_COMPLETE"],
)
def test_unknown_stack_status_maps_to_none(stack_status: str) -> None:
    assert status.build_status(stack_status) is None


@pytest.mark.parametrize(
    ("stack_status", "settled"),
    [
        ("CREATE_IN_PROGRESS", False),
        ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", False),
        ("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS", False),
        ("REVIEW_IN_PROGRESS", False),
        ("ROLLBACK_IN_PROGRESS", False),
        ("IMPORT_ROLLBACK_IN_PROGRESS", False),
        ("DELETE_IN_PROGRESS", False),
        ("CREATE_COMPLETE", True),
        ("CREATE_FAILED", True),
        ("ROLLBACK_COMPLETE", True),
        ("UPDATE_ROLLBACK_FAILED", True),
        ("IMPORT_COMPLETE", True),
        ("DELETE_FAILED", True),
        ("DELETE_COMPLETE", True),
    ],
)
def test_stack_is_settled_unless_an_operation_is_in_progress(stack_status: str, settled: bool) -> None:
    assert status.stack_is_settled(stack_status) is settled


@pytest.mark.parametrize(("stack_status", "expected"), STACK_STATUS_TABLE)
def test_every_in_progress_build_status_comes_from_an_unsettled_stack(stack_status: str, expected: str) -> None:
    in_progress = expected in {"BUILD_IN_PROGRESS", "DELETE_IN_PROGRESS"} or stack_status == "ROLLBACK_IN_PROGRESS"
    assert status.stack_is_settled(stack_status) is not in_progress


@pytest.mark.parametrize(
    ("stack_status", "described"),
    [
        ("DELETE_COMPLETE", False),
        ("DELETE_IN_PROGRESS", True),
        ("DELETE_FAILED", True),
        ("CREATE_IN_PROGRESS", True),
        ("CREATE_COMPLETE", True),
        ("ROLLBACK_COMPLETE", True),
        ("UPDATE_ROLLBACK_COMPLETE", True),
    ],
)
def test_only_a_deleted_stack_is_hidden_from_describe(stack_status: str, described: bool) -> None:
    assert status.stack_is_described(stack_status) is described
