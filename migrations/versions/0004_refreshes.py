"""refreshes: looks at AWS still owed (a part AWS could not answer for, an event's failed refresh)

Revision ID: 0004_refreshes
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0004_refreshes"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refreshes",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(128), primary_key=True),
        sa.Column("requested_at", UtcDateTime, nullable=False),
        sa.Column("happened_at", UtcDateTime, nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_at", UtcDateTime, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_refreshes_due_at", "refreshes", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_refreshes_due_at", table_name="refreshes")
    op.drop_table("refreshes")
