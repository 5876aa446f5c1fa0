"""subscriptions: each notification subscription's cursor and delivery state, and the dead letters

A subscription's cursor (delivered_seq) runs over transitions.id, the change sequence of status changes;
it moves only after the subscription's sink accepted. dead_letters keeps what was given up on.

Revision ID: 0006_subscriptions
Revises: 0005_fleet_history
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0006_subscriptions"
down_revision: str | None = "0005_fleet_history"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("delivered_seq", sa.BigInteger, nullable=False),
        sa.Column("news_since", UtcDateTime, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure_at", UtcDateTime, nullable=True),
        sa.Column("next_attempt_at", UtcDateTime, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", UtcDateTime, nullable=True),
        sa.Column("delivered_at", UtcDateTime, nullable=True),
        sa.Column("disabled_at", UtcDateTime, nullable=True),
        sa.Column("disabled_reason", sa.Text, nullable=True),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", Serial, primary_key=True, autoincrement=True),
        sa.Column("subscription", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("first_failure_at", UtcDateTime, nullable=False),
        sa.Column("dead_at", UtcDateTime, nullable=False),
        sa.Column("last_error", sa.Text, nullable=False),
    )
    op.create_index("ix_dead_letters_subscription", "dead_letters", ["subscription", "id"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_subscription", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("subscriptions")
