"""processed events, poison messages, and indexes for mapping events to images

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import Serial, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_images_imagebuilder_arn", "images", ["imagebuilder_arn"])
    op.create_index("ix_images_region_stack_status", "images", ["region", "stack_status"])
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("processed_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"])
    op.create_table(
        "poison_messages",
        sa.Column("id", Serial, primary_key=True, autoincrement=True),
        sa.Column("queue_url", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("poison_messages")
    op.drop_table("processed_events")
    op.drop_index("ix_images_region_stack_status", "images")
    op.drop_index("ix_images_imagebuilder_arn", "images")
