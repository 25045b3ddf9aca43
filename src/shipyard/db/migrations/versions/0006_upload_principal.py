"""the principal that started each upload session

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 21:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # sessions started before this revision have no principal and count against nobody's cap
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal", sa.String(length=255), nullable=True))
        batch_op.create_index(batch_op.f("ix_upload_sessions_principal"), ["principal"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_sessions_principal"))
        batch_op.drop_column("principal")
