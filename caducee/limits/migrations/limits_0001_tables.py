"""Limits: failure counters and once-per-window claims shared by every node

Revision ID: limits_0001
Revises:
Create Date: 2026-12-10 09:00:00

The first revision of the limits component's own branch; its tables refer to no other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "limits_0001"
down_revision = None
branch_labels = ("limits",)
depends_on = "0006"


def upgrade() -> None:
    op.create_table(
        "limit_failures",
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
    )
    op.create_index("ix_limit_failures_locked_until", "limit_failures", ["locked_until"])
    op.create_table(
        "limit_windows",
        sa.Column("key", sa.String(320), primary_key=True),
        sa.Column("last_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_limit_windows_last_at", "limit_windows", ["last_at"])


def downgrade() -> None:
    op.drop_table("limit_windows")
    op.drop_table("limit_failures")
