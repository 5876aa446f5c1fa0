"""images, revisions and transitions

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import Serial, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("exists", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("config_bucket", sa.Text, nullable=True),
        sa.Column("config_key", sa.Text, nullable=True),
        sa.Column("config_available", sa.Boolean, nullable=False),
        sa.Column("build_status", sa.String(32), nullable=True),
        sa.Column("stack_status", sa.String(64), nullable=True),
        sa.Column("stack_status_reason", sa.Text, nullable=True),
        sa.Column("imagebuilder_status", sa.String(32), nullable=True),
        sa.Column("imagebuilder_status_reason", sa.Text, nullable=True),
        sa.Column("ami_state", sa.String(32), nullable=True),
        sa.Column("stack_id", sa.Text, nullable=True),
        sa.Column("ami_id", sa.String(64), nullable=True),
        sa.Column("imagebuilder_arn", sa.Text, nullable=True),
        sa.Column("parts", sa.Text, nullable=False),
        sa.Column("stack_as_of", UtcDateTime, nullable=True),
        sa.Column("ami_as_of", UtcDateTime, nullable=True),
        sa.Column("imagebuilder_as_of", UtcDateTime, nullable=True),
        sa.Column("config_as_of", UtcDateTime, nullable=True),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("changed_at", UtcDateTime, nullable=False),
        sa.Column("confirmed_at", UtcDateTime, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_images_ami_id", "images", ["ami_id"])
    op.create_index("ix_images_region_build_status", "images", ["region", "build_status"])

    op.create_table(
        "revisions",
        sa.Column("seq", Serial, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("exists", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("config_bucket", sa.Text, nullable=True),
        sa.Column("config_key", sa.Text, nullable=True),
        sa.Column("config_available", sa.Boolean, nullable=False),
        sa.Column("observed_at", UtcDateTime, nullable=False),
        sa.Column("happened_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("region", "image_id", "version", name="uq_revisions_image_version"),
    )
    op.create_index("ix_revisions_image_observed", "revisions", ["region", "image_id", "observed_at"])

    op.create_table(
        "transitions",
        sa.Column("id", Serial, primary_key=True, autoincrement=True),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(128), nullable=False),
        sa.Column("happened_at", UtcDateTime, nullable=False),
        sa.Column("observed_at", UtcDateTime, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("exists", sa.Boolean, nullable=False),
        sa.Column("build_status", sa.String(32), nullable=True),
        sa.Column("stack_status", sa.String(64), nullable=True),
        sa.Column("stack_status_reason", sa.Text, nullable=True),
        sa.Column("imagebuilder_status", sa.String(32), nullable=True),
        sa.Column("imagebuilder_status_reason", sa.Text, nullable=True),
        sa.Column("ami_state", sa.String(32), nullable=True),
    )
    op.create_index("ix_transitions_image", "transitions", ["region", "image_id", "id"])


def downgrade() -> None:
    op.drop_table("transitions")
    op.drop_table("revisions")
    op.drop_table("images")
