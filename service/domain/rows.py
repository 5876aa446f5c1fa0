"""Pure: one change against an image's stored row -> the rows to write, and what happened (`ApplyResult`).

Rows are plain dicts keyed by column name (the tables are in service.store.tables): the image's row
after the change; a revision row when what is served changes (document, existence or configuration
location: the version goes up); a transition row when the statuses change. The store locks, reads
and writes them; everything it writes is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain import records
from service.domain.describe import visible_stack
from service.domain.models import TAG_VERSION, Change, ConfigLocation, StatusFields, tag_value

Row = dict[str, Any]

# The columns of the image row a revision keeps as they were: what was served at that version.
SERVED_COLUMNS = (
    "region",
    "image_id",
    "version",
    "exists",
    "document",
    "config_bucket",
    "config_key",
    "config_available",
)
# StatusFields attribute -> column, in the images and transitions tables alike.
STATUS_COLUMNS = (
    ("exists", "exists"),
    ("image_build_status", "build_status"),
    ("stack_status", "stack_status"),
    ("stack_status_reason", "stack_status_reason"),
    ("imagebuilder_status", "imagebuilder_status"),
    ("imagebuilder_status_reason", "imagebuilder_status_reason"),
    ("ami_state", "ami_state"),
)


@dataclass(frozen=True)
class ApplyResult:
    region: str
    image_id: str
    stored: bool  # a row exists after the change
    changed: bool  # the served document (version) changed
    transitioned: bool  # a transition row was written
    exists: bool
    version: int
    seq: int | None  # the revision's sequence number, once written (None when not changed)


@dataclass(frozen=True)
class Written:
    """The rows one change writes (None: that row is not written) and its result (without `seq` yet)."""

    image: Row | None
    revision: Row | None
    transition: Row | None
    result: ApplyResult


def status_columns(fields: StatusFields) -> Row:
    return {column: getattr(fields, attribute) for attribute, column in STATUS_COLUMNS}


def status_of(row: Mapping[str, Any]) -> StatusFields:
    values = {attribute: row[column] for attribute, column in STATUS_COLUMNS}
    values["exists"] = bool(values["exists"])
    return StatusFields(**values)


def listing_columns(parts: records.Parts) -> Row:
    """What a transition keeps besides the statuses, for ListImages at a past moment: the visible stack's id,
    the AMI's id, and the ParallelCluster version (the AMI's tag, else the stack's)."""
    stack = visible_stack(parts.stack_value)
    ami = parts.ami_value
    tags = ami.tags if ami is not None else stack.tags if stack is not None else ()
    return {
        "stack_id": stack.stack_id if stack is not None else None,
        "ami_id": ami.ami_id if ami is not None else None,
        "pcluster_version": tag_value(tags, TAG_VERSION),
    }


def _links(columns: Mapping[str, Any]) -> tuple[Any, Any]:
    return columns["stack_id"], columns["ami_id"]


def config_columns(config: ConfigLocation) -> Row:
    return {"config_bucket": config.bucket, "config_key": config.key, "config_available": config.available}


def config_of(row: Mapping[str, Any]) -> ConfigLocation:
    return ConfigLocation(bucket=row["config_bucket"], key=row["config_key"], available=bool(row["config_available"]))


def _latest(first: datetime | None, second: datetime) -> datetime:
    return second if first is None or second > first else first


def _status_since(stored: Mapping[str, Any] | None, fields: StatusFields, happened: datetime) -> datetime:
    """When the current build status began: kept while it lasts, the change's time when it is new."""
    if stored is not None and stored.get("status_since") is not None:
        same = bool(stored["exists"]) == fields.exists and stored["build_status"] == fields.image_build_status
        if same:
            since: datetime = stored["status_since"]
            return since
    return happened


def apply(stored: Mapping[str, Any] | None, change: Change) -> Written:
    """What `change` writes, given the image's stored row (None: not stored). Idempotent: applying the
    same change to the row it produced writes no revision and no transition, and keeps the version."""
    before = records.decode_parts(stored["parts"]) if stored else records.Parts()
    after = records.merge(before, change)
    rendered = records.render(region=change.region, image_id=change.image_id, parts=after)
    fields = rendered.fields

    if stored is None and not fields.exists:
        # Nothing to remember about an image that never existed here.
        nothing = ApplyResult(change.region, change.image_id, False, False, False, False, 0, None)
        return Written(None, None, None, nothing)

    document = rendered.document.decode() if rendered.document is not None else None
    config = rendered.config
    changed = stored is None or (
        document != stored["document"] or fields.exists != bool(stored["exists"]) or config != config_of(stored)
    )
    listed = listing_columns(after)
    # Another stack or AMI in the same statuses is a transition too: what ListImages showed changed.
    transitioned = stored is None or status_of(stored) != fields or _links(listing_columns(before)) != _links(listed)
    version = (stored["version"] if stored else 0) + (1 if changed else 0)
    happened = change.happened_at or change.observed_at

    image: Row = {
        "region": change.region,
        "image_id": change.image_id,
        "version": version,
        "exists": fields.exists,
        "document": document,
        **config_columns(config),
        **status_columns(fields),
        "stack_id": after.stack_value.stack_id if after.stack_value else None,
        "ami_id": after.ami_value.ami_id if after.ami_value else None,
        "imagebuilder_arn": after.imagebuilder_value.arn if after.imagebuilder_value else None,
        "parts": records.encode_parts(after),
        "stack_as_of": after.stack.as_of if after.stack else None,
        "ami_as_of": after.ami.as_of if after.ami else None,
        "imagebuilder_as_of": after.imagebuilder.as_of if after.imagebuilder else None,
        "config_as_of": after.config.as_of if after.config else None,
        "created_at": stored["created_at"] if stored else change.observed_at,
        "changed_at": stored["changed_at"] if stored and not changed else change.observed_at,
        "confirmed_at": _latest(stored["confirmed_at"] if stored else None, change.observed_at),
        # The store sets the new revision's sequence number once the revision is inserted.
        "seq": stored["seq"] if stored else 0,
        "status_since": _status_since(stored, fields, happened),
    }
    revision = (
        {
            **{column: image[column] for column in SERVED_COLUMNS},
            "observed_at": change.observed_at,
            "happened_at": happened,
        }
        if changed
        else None
    )
    transition = (
        {
            "region": change.region,
            "image_id": change.image_id,
            "happened_at": happened,
            "observed_at": change.observed_at,
            "source": change.source.value,
            **status_columns(fields),
            **listed,
        }
        if transitioned
        else None
    )
    result = ApplyResult(change.region, change.image_id, True, changed, transitioned, fields.exists, version, None)
    return Written(image, revision, transition, result)
