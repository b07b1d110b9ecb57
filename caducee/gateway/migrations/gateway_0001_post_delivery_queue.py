"""Gateway: the post-delivery queue

Revision ID: gateway_0001
Revises:
Create Date: 2026-12-10 10:00:00

The first revision of the gateway's own branch (its outbound queue was created by the trunk's
0002). The post-delivery queue: each consumer of a delivery (the dossier's XDM intake, the
agenda's invitations) still to be run on a stored message, written in the group commit that
stored it. Its table refers to no other (a stored message may be purged before a retry).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "gateway_0001"
down_revision = None
branch_labels = ("gateway",)
depends_on = "0006"

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "post_delivery_queue",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("mailbox_type", sa.String(3), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("sender_kind", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("message_id_header", sa.String(998), nullable=False),
        sa.Column("consumer", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("message_id", "mailbox_id", "consumer", name="uq_post_delivery_queue_message_mailbox_consumer"),
    )
    op.create_index("ix_post_delivery_queue_due", "post_delivery_queue", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("post_delivery_queue")
