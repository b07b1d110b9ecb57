"""Webmail: what a patient manages of their account (alert settings, password resets, email
changes) and the drafts kept when a session ends while they write

Revision ID: wa001
Revises: w0001
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "wa001"
down_revision = "w0001"
branch_labels = None
depends_on = None


def _patient_fk(table: str, column: str = "patient_id") -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], ["patients.id"], name=op.f(f"fk_{table}_{column}_patients"))


def upgrade() -> None:
    op.create_table(
        "webmail_alert_settings",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("new_mail_alerts", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("webmail_alert_settings"),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_webmail_alert_settings")),
    )
    op.create_table(
        "webmail_password_resets",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("webmail_password_resets"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webmail_password_resets")),
    )
    op.create_index(op.f("ix_webmail_password_resets_patient_id"), "webmail_password_resets", ["patient_id"])
    op.create_table(
        "webmail_email_changes",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("new_email", sa.String(254), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("webmail_email_changes"),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_webmail_email_changes")),
    )
    op.create_table(
        "webmail_drafts",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("acting_patient_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(200), nullable=False),
        sa.Column("sealed_text", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _patient_fk("webmail_drafts"),
        _patient_fk("webmail_drafts", "acting_patient_id"),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_webmail_drafts")),
    )


def downgrade() -> None:
    op.drop_table("webmail_drafts")
    op.drop_table("webmail_email_changes")
    op.drop_index(op.f("ix_webmail_password_resets_patient_id"), table_name="webmail_password_resets")
    op.drop_table("webmail_password_resets")
    op.drop_table("webmail_alert_settings")
