"""IMAP: tombstones for expunged entries, precomputed message structure, subscriptions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch_op:
        batch_op.add_column(sa.Column("summary", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("mailbox_entries") as batch_op:
        batch_op.add_column(sa.Column("expunged_modseq", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("folders") as batch_op:
        batch_op.add_column(sa.Column("subscribed", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("folders") as batch_op:
        batch_op.drop_column("subscribed")
    with op.batch_alter_table("mailbox_entries") as batch_op:
        batch_op.drop_column("expunged_modseq")
    with op.batch_alter_table("messages") as batch_op:
        batch_op.drop_column("summary")
