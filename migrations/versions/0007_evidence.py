"""evidence: a build's stack events, log streams and log events, kept when it ends

Revision ID: 0007_evidence
Revises: 0006_subscriptions
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0007_evidence"
down_revision: str | None = "0006_subscriptions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evidence",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(128), primary_key=True),
        sa.Column("build_start", UtcDateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("captured_at", UtcDateTime, nullable=False),
        sa.Column("ended_at", UtcDateTime, nullable=True),
        sa.Column("stack_events", sa.Text, nullable=True),
        sa.Column("log_streams", sa.Text, nullable=True),
        sa.Column("imagebuilder_reason", sa.Text, nullable=True),
        sa.Column("cut", sa.Boolean, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("aws_calls", sa.Integer, nullable=False),
    )
    op.create_index("ix_evidence_captured", "evidence", ["captured_at"])
    op.create_table(
        "evidence_logs",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("image_id", sa.String(128), primary_key=True),
        sa.Column("log_stream_name", sa.String(512), primary_key=True),
        sa.Column("events", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("evidence_logs")
    op.drop_index("ix_evidence_captured", table_name="evidence")
    op.drop_table("evidence")
