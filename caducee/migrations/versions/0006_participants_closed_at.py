"""Conversations: each participant's row says when the conversation was closed

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 06:30:00

The webmail checks a cached conversation list against a version on every page. Its second
half counted the closed conversations of the address through a join, one probe per
conversation: 1.5 ms of PostgreSQL time per page for a patient with 1,000 conversations,
the largest cost of the page under load. The latest closing among the address's
conversations, read from a partial index, changes exactly when that count did.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversation_participants") as batch_op:
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE conversation_participants SET closed_at = "
        "(SELECT c.closed_at FROM conversations c WHERE c.id = conversation_participants.conversation_id) "
        "WHERE conversation_id IN (SELECT id FROM conversations WHERE state = 'closed')"
    )
    op.create_index(
        "ix_conversation_participants_closed",
        "conversation_participants",
        ["address", "closed_at"],
        postgresql_where=sa.text("closed_at IS NOT NULL"),
        sqlite_where=sa.text("closed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_conversation_participants_closed", table_name="conversation_participants")
    with op.batch_alter_table("conversation_participants") as batch_op:
        batch_op.drop_column("closed_at")
