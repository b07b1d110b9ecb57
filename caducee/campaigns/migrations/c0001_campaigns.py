"""Campaigns: campaigns, their fan-out batches, target-file rows and problems, API tokens, audit

Revision ID: c0001
Revises:
Create Date: 2026-11-24 09:00:00

The first revision of the campaigns branch; it refers to nothing outside it (patient ids
and the mailbox store's message id are plain columns, as the component walls want).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0001"
down_revision = None
branch_labels = ("campaigns",)
depends_on = "0006"

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("subject", sa.String(250), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("pdf_name", sa.String(200), nullable=True),
        sa.Column("pdf", sa.LargeBinary(), nullable=True),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("uses_file", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("targeted", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.Text(), nullable=False),
        sa.Column("file_rows", sa.BigInteger(), nullable=False),
        sa.Column("file_problems", sa.Text(), nullable=False),
        sa.Column("recalled", sa.BigInteger(), nullable=False),
        sa.Column("read_before_recall", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index("ix_campaigns_state", "campaigns", ["state", "send_at"])
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
    op.create_table(
        "campaign_targets",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("ins", sa.String(15), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_targets_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("campaign_id", "ins", name=op.f("pk_campaign_targets")),
    )
    op.create_index("ix_campaign_targets_patient", "campaign_targets", ["campaign_id", "patient_id"])
    op.create_table(
        "campaign_file_problems",
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("line_no", sa.BigInteger(), nullable=False),
        sa.Column("problem", sa.String(12), nullable=False),
        sa.Column("detail", sa.String(300), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name=op.f("fk_campaign_file_problems_campaign_id_campaigns")),
        sa.PrimaryKeyConstraint("campaign_id", "line_no", name=op.f("pk_campaign_file_problems")),
    )
    op.create_table(
        "campaign_api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_campaign_api_tokens_token_sha256")),
    )
    op.create_table(
        "campaign_audit",
        sa.Column("id", BIG, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("sender", sa.String(254), nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_audit")),
    )


def downgrade() -> None:
    for table in ("campaign_audit", "campaign_api_tokens", "campaign_file_problems", "campaign_targets", "campaign_batches"):
        op.drop_table(table)
    op.drop_index("ix_campaigns_state", table_name="campaigns")
    op.drop_table("campaigns")
