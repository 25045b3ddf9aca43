"""audit management actions: the account acted on, the target and the outcome

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01 23:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("target", sa.String(length=255), nullable=True))
        # every event written before this revision is a denial
        batch_op.add_column(
            sa.Column("outcome", sa.String(length=16), server_default="denied", nullable=False)
        )
        batch_op.create_index("ix_audit_events_account_id", ["account", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_account_id")
        batch_op.drop_column("outcome")
        batch_op.drop_column("target")
        batch_op.drop_column("account")
