"""rechecks: the refreshes table renamed, so the looks at AWS still owed have one name in code, tables and docs

The table, its due-time index and (PostgreSQL) its primary key take the new name; no row changes.
SQLite cannot rename an index, so the index is dropped and made again under its new name.

Revision ID: 0008_rechecks
Revises: 0007_evidence
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_rechecks"
down_revision: str | None = "0007_evidence"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rename(old: str, new: str) -> None:
    op.drop_index(f"ix_{old}_due_at", table_name=old)
    op.rename_table(old, new)
    if op.get_bind().dialect.name == "postgresql":
        # PostgreSQL named the key after the table when 0004 created it; keep it matching.
        op.execute(f'ALTER TABLE "{new}" RENAME CONSTRAINT "{old}_pkey" TO "{new}_pkey"')
    op.create_index(f"ix_{new}_due_at", new, ["due_at"])


def upgrade() -> None:
    _rename("refreshes", "rechecks")


def downgrade() -> None:
    _rename("rechecks", "refreshes")
