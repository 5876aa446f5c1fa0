"""fleet history: what ListImages showed kept on each transition, the builds table, and their indexes

Transitions gain the visible stack's id, the AMI's id and the ParallelCluster version, so the fleet as
the cache knew it at any moment is one read; the builds table holds the builds derived from each
image's transitions (service.domain.builds), builds_pending the images waiting for that. Indexes: the
fleet's transitions by (region, happened_at, id), an image's by time and by observation time, and
builds by (region, start_time), plus two that let summaries read indexes only.

Existing transitions are backfilled from their image's current row (older history of a rebuilt
image id gets the newest build's ids and version: nothing older was kept), and existing builds are
derived from the stored transitions with today's derivation.

Revision ID: 0005_fleet_history
Revises: 0004_refreshes
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0005_fleet_history"
down_revision: str | None = "0004_refreshes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERSION_TAG = "parallelcluster:version"


def _version(parts: str | None) -> str | None:
    """The AMI's version tag, else the stack's, from an image row's stored parts."""
    raw = orjson.loads(parts) if parts else {}
    for name in ("ami", "stack"):
        value = (raw.get(name) or {}).get("value") or {}
        for key, tag in value.get("tags") or ():
            if key == VERSION_TAG:
                return str(tag)
    return None


def upgrade() -> None:
    with op.batch_alter_table("transitions") as batch:
        batch.add_column(sa.Column("stack_id", sa.Text, nullable=True))
        batch.add_column(sa.Column("ami_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("pcluster_version", sa.String(32), nullable=True))
    op.create_index("ix_transitions_region_happened", "transitions", ["region", "happened_at", "id"])
    op.create_index("ix_transitions_image_happened", "transitions", ["region", "image_id", "happened_at", "id"])
    op.create_index(
        "ix_transitions_image_observed", "transitions",
        ["region", "image_id", "observed_at", "id", "stack_status", "ami_state"],
    )

    bind = op.get_bind()
    images = sa.table(
        "images", sa.column("region"), sa.column("image_id"), sa.column("stack_id"), sa.column("ami_id"),
        sa.column("parts"),
    )
    transitions = sa.table(
        "transitions", sa.column("region"), sa.column("image_id"), sa.column("stack_status"),
        sa.column("ami_state"), sa.column("stack_id"), sa.column("ami_id"), sa.column("pcluster_version"),
    )
    backfill = (
        transitions.update()
        .where(transitions.c.region == sa.bindparam("b_region"), transitions.c.image_id == sa.bindparam("b_image"))
        .values(
            stack_id=sa.case((transitions.c.stack_status.is_not(None), sa.bindparam("b_stack")), else_=None),
            ami_id=sa.case((transitions.c.ami_state.is_not(None), sa.bindparam("b_ami")), else_=None),
            pcluster_version=sa.bindparam("b_version"),
        )
    )
    keys = []
    for row in bind.execute(sa.select(images)).all():
        keys.append((row.region, row.image_id))
        bind.execute(
            backfill,
            {
                "b_region": row.region, "b_image": row.image_id, "b_stack": row.stack_id, "b_ami": row.ami_id,
                "b_version": _version(row.parts),
            },
        )

    op.create_table(
        "builds",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(128), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("start_time", UtcDateTime, nullable=False),
        sa.Column("start_source", sa.String(16), nullable=False),
        sa.Column("start_exact", sa.Boolean, nullable=False),
        sa.Column("start_after", UtcDateTime, nullable=True),
        sa.Column("end_time", UtcDateTime, nullable=True),
        sa.Column("end_source", sa.String(16), nullable=True),
        sa.Column("end_exact", sa.Boolean, nullable=True),
        sa.Column("end_after", UtcDateTime, nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("pcluster_version", sa.String(32), nullable=True),
        sa.Column("stack_status_reason", sa.Text, nullable=True),
        sa.Column("imagebuilder_status_reason", sa.Text, nullable=True),
        sa.Column("failure_key", sa.Text, nullable=True),
        sa.Column("phases", sa.Text, nullable=False),
        sa.Column("start_week", sa.String(10), nullable=False),
    )
    op.create_index("ix_builds_region_start", "builds", ["region", "start_time", "image_id", "number"])
    op.create_index(
        "ix_builds_summary", "builds",
        ["region", "start_time", "outcome", "pcluster_version", "start_week", "duration_seconds"],
    )
    failed = sa.text("failure_key IS NOT NULL")
    op.create_index(
        "ix_builds_failures", "builds", ["region", "start_time", "failure_key"], sqlite_where=failed,
        postgresql_where=failed,
    )
    op.create_table(
        "builds_pending",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(128), primary_key=True),
    )

    # The derivation is the service's own (imported, not copied): builds must read the same whichever
    # path wrote them.
    from service.store import builds

    builds.rewrite(bind, keys)


def downgrade() -> None:
    op.drop_table("builds_pending")
    op.drop_index("ix_builds_failures", "builds")
    op.drop_index("ix_builds_summary", "builds")
    op.drop_index("ix_builds_region_start", "builds")
    op.drop_table("builds")
    op.drop_index("ix_transitions_image_observed", "transitions")
    op.drop_index("ix_transitions_image_happened", "transitions")
    op.drop_index("ix_transitions_region_happened", "transitions")
    with op.batch_alter_table("transitions") as batch:
        batch.drop_column("pcluster_version")
        batch.drop_column("ami_id")
        batch.drop_column("stack_id")
