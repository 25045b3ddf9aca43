"""auth change serials

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    auth_changes = op.create_table(
        "auth_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("deletions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_changes")),
    )
    # the one row that writers increment
    op.bulk_insert(auth_changes, [{"id": 1, "serial": 0, "deletions": 0}])
    for table in ("accounts", "principals"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("change_serial", sa.BigInteger(), server_default="0", nullable=False)
            )
            batch_op.create_index(batch_op.f(f"ix_{table}_change_serial"), ["change_serial"], unique=False)


def downgrade() -> None:
    for table in ("principals", "accounts"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_change_serial"))
            batch_op.drop_column("change_serial")
    op.drop_table("auth_changes")
