"""region listings: when a reconcile pass (of any replica) first and last listed each region

Until a region has one, its list answers 503 rather than an empty list: a fleet never listed is not an
empty fleet.

Revision ID: 0010_region_listings
Revises: 0009_recheck_news
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.store.tables import UtcDateTime

revision: str = "0010_region_listings"
down_revision: str | None = "0009_recheck_news"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "region_listings",
        sa.Column("region", sa.String(32), primary_key=True),
        sa.Column("first_listed_at", UtcDateTime, nullable=False),
        sa.Column("listed_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("region_listings")
