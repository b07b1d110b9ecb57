"""Mailbox: when each entry was expunged, so the purge job can delete old tombstones

Revision ID: mailbox_0002
Revises: mailbox_0001
Create Date: 2026-12-10 09:00:00

Tombstones made before this revision have no time: the purge treats them as old.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mailbox_0002"
down_revision = "mailbox_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox_entries") as batch_op:
        batch_op.add_column(sa.Column("expunged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mailbox_entries") as batch_op:
        batch_op.drop_column("expunged_at")
