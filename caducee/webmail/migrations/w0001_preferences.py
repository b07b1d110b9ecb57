"""Webmail: a patient's preferences (hiding prevention messages)

Revision ID: w0001
Revises:
Create Date: 2026-11-24 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "w0001"
down_revision = None
branch_labels = ("webmail",)
depends_on = "0006"


def upgrade() -> None:
    op.create_table(
        "webmail_preferences",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("hide_prevention", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_webmail_preferences_patient_id_patients")),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_webmail_preferences")),
    )


def downgrade() -> None:
    op.drop_table("webmail_preferences")
