"""Campaigns delivered when read: a start order, the profiles it reaches, each inbox's watermark

Revision ID: c0002
Revises: c0001
Create Date: 2026-12-01 09:00:00

A started campaign is no longer cut into fan-out batches: it gets its place in the order
campaigns were sent (`seq`, from `campaign_sequence`), the last patient id it may reach
(`patient_cutoff`) and the number the rules let it reach (`receiving`); each patient's
inbox is filed when the webmail first opens it (`campaign_inboxes`: how far it is done).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("patient_cutoff", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("receiving", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_campaigns_seq", "campaigns", ["seq"], unique=True)
    op.create_table(
        "campaign_sequence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_sequence")),
    )
    op.execute("INSERT INTO campaign_sequence (id, last) VALUES (1, 0)")
    op.create_table(
        "campaign_inboxes",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("seen_upto", sa.BigInteger(), nullable=False),
        sa.Column("decided", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("mailbox_id", name=op.f("pk_campaign_inboxes")),
    )
    op.drop_table("campaign_batches")


def downgrade() -> None:
    op.create_table(
        "campaign_batches",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_batches_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("campaign_id", "lo", name=op.f("pk_campaign_batches")),
    )
    op.drop_table("campaign_inboxes")
    op.drop_table("campaign_sequence")
    op.drop_index("ix_campaigns_seq", table_name="campaigns")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("receiving")
        batch.drop_column("patient_cutoff")
        batch.drop_column("seq")
