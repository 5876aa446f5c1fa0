"""images.status_since (when the current build status began), and the service_keys table

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("status_since", UtcDateTime, nullable=True))
    # Existing images: the first transition of the latest run of their current build status (the
    # transitions after the last one with another status), else when the row was created.
    images = sa.table(
        "images", sa.column("region"), sa.column("image_id"), sa.column("build_status"),
        sa.column("created_at"), sa.column("status_since"),
    )
    transitions = sa.table(
        "transitions", sa.column("id"), sa.column("region"), sa.column("image_id"), sa.column("build_status"),
        sa.column("happened_at"),
    )
    other = transitions.alias("other")
    same_image = sa.and_(transitions.c.region == images.c.region, transitions.c.image_id == images.c.image_id)
    last_other = (
        sa.select(sa.func.max(other.c.id))
        .where(
            other.c.region == images.c.region,
            other.c.image_id == images.c.image_id,
            other.c.build_status.is_distinct_from(images.c.build_status),
        )
        .correlate(images)
        .scalar_subquery()
    )
    began = (
        sa.select(sa.func.min(transitions.c.happened_at))
        .where(same_image, transitions.c.id > sa.func.coalesce(last_other, 0))
        .scalar_subquery()
    )
    op.execute(images.update().values(status_since=sa.func.coalesce(began, images.c.created_at)))
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_keys")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("status_since")
