"""recheck news: an event's news kept with its owed recheck until its image is stored

`rechecks.news`: what an event said about an image the cache did not hold yet (a stack status, an AMI
state), merged into the image as soon as a write stores it (service.store.changes), instead of waiting
for AWS to answer the recheck.

Revision ID: 0009_recheck_news
Revises: 0008_rechecks
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_recheck_news"
down_revision: str | None = "0008_rechecks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rechecks") as batch:
        batch.add_column(sa.Column("news", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rechecks") as batch:
        batch.drop_column("news")
