"""Pure status decisions: CloudFormation stack status -> image build status, terminal states."""

from __future__ import annotations

BUILD_STATUS_BY_STACK_STATUS: dict[str, str] = {
    **dict.fromkeys(
        (
            "CREATE_IN_PROGRESS",
            "UPDATE_IN_PROGRESS",
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
            "UPDATE_ROLLBACK_IN_PROGRESS",
            "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "REVIEW_IN_PROGRESS",
            "IMPORT_IN_PROGRESS",
            "IMPORT_ROLLBACK_IN_PROGRESS",
        ),
        "BUILD_IN_PROGRESS",
    ),
    **dict.fromkeys(
        (
            "ROLLBACK_IN_PROGRESS",
            "CREATE_FAILED",
            "ROLLBACK_FAILED",
            "ROLLBACK_COMPLETE",
            "UPDATE_ROLLBACK_FAILED",
            "UPDATE_ROLLBACK_COMPLETE",
            "IMPORT_ROLLBACK_FAILED",
            "IMPORT_ROLLBACK_COMPLETE",
        ),
        "BUILD_FAILED",
    ),
    **dict.fromkeys(("CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"), "BUILD_COMPLETE"),
    "DELETE_IN_PROGRESS": "DELETE_IN_PROGRESS",
    "DELETE_FAILED": "DELETE_FAILED",
    "DELETE_COMPLETE": "DELETE_COMPLETE",
}

def build_status(stack_status: str) -> str | None:
    """The imageBuildStatus pcluster reports for a stack status (None for a status it does not map)."""
    return BUILD_STATUS_BY_STACK_STATUS.get(stack_status)


def stack_is_settled(stack_status: str) -> bool:
    """True when the stack (and so its Image Builder image) is not expected to change without a new operation."""
    return not stack_status.endswith("_IN_PROGRESS")


def stack_is_described(stack_status: str) -> bool:
    """DescribeStacks by name does not return deleted stacks, so pcluster never shows DELETE_COMPLETE."""
    return stack_status != "DELETE_COMPLETE"
