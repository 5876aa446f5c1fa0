"""SQLAlchemy tables: what Alembic migrations create and what the cache reads and writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import DateTime, TypeDecorator

from service.support.clock import as_utc


class UtcDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every backend, always returned timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass UTC-aware values")
        return as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite hands back text, PostgreSQL a naive datetime: both are UTC.
        return as_utc(value)


# SQLite only autoincrements INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


def _served() -> list[Column[Any]]:
    """What describe serves of an image: the current record (images), and each version of it (revisions)."""
    return [
        # Bumped each time the served document (or its existence or config location) changes.
        Column("version", Integer, nullable=False),
        Column("exists", Boolean, nullable=False),
        # The materialized describe document (JSON, without imageConfiguration); NULL when gone.
        Column("document", Text, nullable=True),
        Column("config_bucket", Text, nullable=True),
        Column("config_key", Text, nullable=True),
        Column("config_available", Boolean, nullable=False, default=False),
    ]


def _statuses() -> list[Column[Any]]:
    """An image's statuses: the current ones (images), and each change of them (transitions)."""
    return [
        Column("build_status", String(32), nullable=True),
        Column("stack_status", String(64), nullable=True),
        Column("stack_status_reason", Text, nullable=True),
        Column("imagebuilder_status", String(32), nullable=True),
        Column("imagebuilder_status_reason", Text, nullable=True),
        Column("ami_state", String(32), nullable=True),
    ]


images = Table(
    "images",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("image_id", String(128), primary_key=True),
    *_served(),
    # Status fields, for listing and transitions.
    *_statuses(),
    # Links used to map events back to images.
    Column("stack_id", Text, nullable=True),
    Column("ami_id", String(64), nullable=True),
    Column("imagebuilder_arn", Text, nullable=True),
    # What each source last reported and when (see service.domain.records.Parts).
    Column("parts", Text, nullable=False),
    Column("stack_as_of", UtcDateTime, nullable=True),
    Column("ami_as_of", UtcDateTime, nullable=True),
    Column("imagebuilder_as_of", UtcDateTime, nullable=True),
    Column("config_as_of", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    # When the document last changed (Last-Modified) and was last confirmed against AWS (Age).
    Column("changed_at", UtcDateTime, nullable=False),
    Column("confirmed_at", UtcDateTime, nullable=False),
    # The revision id of the current version: a global, increasing change sequence.
    Column("seq", BigInteger, nullable=False),
    # When the current imageBuildStatus began (AWS's time for the change that brought it): how long a
    # build has been in progress, or an image available. NULL only for rows older than the column.
    Column("status_since", UtcDateTime, nullable=True),
)
Index("ix_images_ami_id", images.c.ami_id)
Index("ix_images_region_build_status", images.c.region, images.c.build_status)

# One row per document version: what `at=` and the change stream read.
revisions = Table(
    "revisions",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),
    Column("image_id", String(128), nullable=False),
    *_served(),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("happened_at", UtcDateTime, nullable=False),
    UniqueConstraint("region", "image_id", "version", name="uq_revisions_image_version"),
)
Index("ix_revisions_image_observed", revisions.c.region, revisions.c.image_id, revisions.c.observed_at)

# Append-only: one row each time an image's statuses change.
transitions = Table(
    "transitions",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("region", String(32), nullable=False),
    Column("image_id", String(128), nullable=False),
    Column("happened_at", UtcDateTime, nullable=False),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("exists", Boolean, nullable=False),
    *_statuses(),
    # What pcluster's ListImages shows besides the statuses, so the fleet at any moment is one read: the
    # visible stack's id, the AMI's id, and the image's ParallelCluster version (the AMI's tag, else the
    # stack's: one build's AMI and stack carry the same one).
    Column("stack_id", Text, nullable=True),
    Column("ami_id", String(64), nullable=True),
    Column("pcluster_version", String(32), nullable=True),
)
Index("ix_transitions_image", transitions.c.region, transitions.c.image_id, transitions.c.id)
# The fleet's transitions in a window of AWS time, paged by (happened_at, id); and one image's, the same way.
Index("ix_transitions_region_happened", transitions.c.region, transitions.c.happened_at, transitions.c.id)
Index(
    "ix_transitions_image_happened",
    transitions.c.region, transitions.c.image_id, transitions.c.happened_at, transitions.c.id,
)
# An image's state as the cache knew it at a moment: its latest transition observed by then, with the two
# statuses ListImages filters on, so deciding whether an image is listed reads the index alone.
Index(
    "ix_transitions_image_observed",
    transitions.c.region, transitions.c.image_id, transitions.c.observed_at, transitions.c.id,
    transitions.c.stack_status, transitions.c.ami_state,
)
Index("ix_images_imagebuilder_arn", images.c.imagebuilder_arn)
Index("ix_images_region_stack_status", images.c.region, images.c.stack_status)

# Event ids already applied: SQS delivers at least once, EventBridge may send twice.
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("processed_at", UtcDateTime, nullable=False),
)
Index("ix_processed_events_processed_at", processed_events.c.processed_at)

# Messages that could not be read: kept with the reason, so none is lost and none loops forever.
poison_messages = Table(
    "poison_messages",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("queue_url", Text, nullable=False),
    Column("message_id", String(128), nullable=False),
    Column("body", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
)

# Rechecks, the looks at AWS still owed (service.domain.rechecks): a part AWS could not answer for, a targeted
# refresh an event asked for that failed. Kept until a look settles it, retried with backoff; an image with one
# here is served stale.
rechecks = Table(
    "rechecks",
    metadata,
    Column("region", String(32), primary_key=True),
    # "image" (subject: an image id) or "ami" (subject: an AMI id the cache cannot place yet).
    Column("kind", String(16), primary_key=True),
    Column("subject", String(128), primary_key=True),
    # The look must begin at or after this to settle the recheck.
    Column("requested_at", UtcDateTime, nullable=False),
    # The event time the look's change is applied with (NULL: the look's own time).
    Column("happened_at", UtcDateTime, nullable=True),
    Column("source", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    # What the event that owed it said about an image the cache did not hold yet (service.domain.rechecks'
    # news), merged into the image as soon as a write stores it; NULL: nothing waiting.
    Column("news", Text, nullable=True),
)
Index("ix_rechecks_due_at", rechecks.c.due_at)

# When a reconcile pass (of any replica) first and last listed each region: a list answer for a region
# never listed would be an empty fleet presented as truth.
region_listings = Table(
    "region_listings",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("first_listed_at", UtcDateTime, nullable=False),
    Column("listed_at", UtcDateTime, nullable=False),
)

# Secrets this deployment's replicas share (token and cookie signing keys): created on first use.
service_keys = Table(
    "service_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Builds, derived from each image's transitions (service.domain.builds): the fleet's builds and their
# summaries are reads of this table. Rewritten per image soon after its transitions change (builds_pending).
builds = Table(
    "builds",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("image_id", String(128), primary_key=True),
    # The build's place among the image's builds (0 = the oldest retained).
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("start_time", UtcDateTime, nullable=False),
    Column("start_source", String(16), nullable=False),
    Column("start_exact", Boolean, nullable=False),
    # When not exact: the change happened after this observation (NULL: no earlier observation).
    Column("start_after", UtcDateTime, nullable=True),
    Column("end_time", UtcDateTime, nullable=True),
    Column("end_source", String(16), nullable=True),
    Column("end_exact", Boolean, nullable=True),
    Column("end_after", UtcDateTime, nullable=True),
    Column("duration_seconds", Float, nullable=True),
    Column("outcome", String(16), nullable=False),
    Column("pcluster_version", String(32), nullable=True),
    Column("stack_status_reason", Text, nullable=True),
    Column("imagebuilder_status_reason", Text, nullable=True),
    # The failure reason with ids and times taken out, so the same failure groups (failed builds only).
    Column("failure_key", Text, nullable=True),
    # Seconds per Image Builder status, as a JSON object in the order entered.
    Column("phases", Text, nullable=False),
    # The Monday (UTC) of the week the build started, YYYY-MM-DD: the week a summary groups it in.
    Column("start_week", String(10), nullable=False),
)
# The builds of a window, paged by (start_time, image_id, number).
Index("ix_builds_region_start", builds.c.region, builds.c.start_time, builds.c.image_id, builds.c.number)
# Summaries read only indexes: every group key, outcome and duration of a window...
Index(
    "ix_builds_summary",
    builds.c.region, builds.c.start_time, builds.c.outcome, builds.c.pcluster_version, builds.c.start_week,
    builds.c.duration_seconds,
)
# ...and the failures of a window (failure_key is set on failed builds only).
Index(
    "ix_builds_failures",
    builds.c.region, builds.c.start_time, builds.c.failure_key,
    sqlite_where=builds.c.failure_key.is_not(None), postgresql_where=builds.c.failure_key.is_not(None),
)

# Images whose transitions changed since their builds were last derived: written in the transaction that
# writes the transitions (so no crash loses one), drained by builds.derive_marked (Cache.derive_builds).
builds_pending = Table(
    "builds_pending",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("image_id", String(128), primary_key=True),
)

# Notifications (service.notify): each subscription's cursor over the change sequence (transitions.id), moved
# only after its sink accepted, and the state of the delivery after it (failed attempts, when to try again).
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    # Every transition up to this id has been delivered (or was not one to send).
    Column("delivered_seq", BigInteger, nullable=False),
    # An image first seen by the cache is news only if created after this (service.domain.subscriptions.is_news).
    Column("news_since", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Failed attempts at the transition after the cursor, since the first of them; when to try again.
    Column("attempts", Integer, nullable=False),
    Column("first_failure_at", UtcDateTime, nullable=True),
    Column("next_attempt_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UtcDateTime, nullable=True),
    Column("delivered_at", UtcDateTime, nullable=True),
    # Set when the sink said never again (a webhook's 410); a replay enables it again.
    Column("disabled_at", UtcDateTime, nullable=True),
    Column("disabled_reason", Text, nullable=True),
)

# Deliveries given up on after STATUSCACHE_NOTIFY_GIVE_UP_SECONDS of failures: kept with what was sent.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("subscription", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("body", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_failure_at", UtcDateTime, nullable=False),
    Column("dead_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=False),
)
Index("ix_dead_letters_subscription", dead_letters.c.subscription, dead_letters.c.id)

# A build's evidence, read when it ended (service.ingest.evidence) and answered by ParallelCluster's image log
# operations once the stack and log group are gone (service.api.imagelogs). One row per image: its latest
# ended build's. The documents are kept in pcluster's shapes (service.domain.evidence), as JSON.
evidence = Table(
    "evidence",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("image_id", String(128), primary_key=True),
    # The build the evidence is of (builds.start_time) and how it ended.
    Column("build_start", UtcDateTime, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("captured_at", UtcDateTime, nullable=False),
    # When the build ended (builds.end_time): the capture delay is captured_at - this.
    Column("ended_at", UtcDateTime, nullable=True),
    # GetImageStackEvents' events, newest first; NULL: the stack was already gone.
    Column("stack_events", Text, nullable=True),
    # ListImageLogStreams' streams; NULL: the log group was already gone.
    Column("log_streams", Text, nullable=True),
    Column("imagebuilder_reason", Text, nullable=True),
    # Whether the per-build bound cut log events (the answer then says so).
    Column("cut", Boolean, nullable=False),
    # Bytes kept for this build (all its rows' JSON), and the AWS calls the capture made.
    Column("size_bytes", Integer, nullable=False),
    Column("aws_calls", Integer, nullable=False),
)
Index("ix_evidence_captured", evidence.c.captured_at)

# A kept log stream's events ({"timestamp": ms, "message"}), oldest first, as JSON.
evidence_logs = Table(
    "evidence_logs",
    metadata,
    Column("region", String(32), primary_key=True),
    Column("image_id", String(128), primary_key=True),
    Column("log_stream_name", String(512), primary_key=True),
    Column("events", Text, nullable=False),
)
