"""Traces: the operator's record of actions per mailbox

Revision ID: traces_0001
Revises:
Create Date: 2026-12-02 19:00:00

The first revision of the trace component's own branch; its table refers to no other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "traces_0001"
down_revision = None
branch_labels = ("traces",)
depends_on = "0006"

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mailbox_traces",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("answer", sa.String(300), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("detail", sa.String(2000), nullable=False),
    )
    op.create_index("ix_mailbox_traces_at", "mailbox_traces", ["at"])
    op.create_index("ix_mailbox_traces_mailbox_at", "mailbox_traces", ["mailbox", "at"])


def downgrade() -> None:
    op.drop_table("mailbox_traces")
