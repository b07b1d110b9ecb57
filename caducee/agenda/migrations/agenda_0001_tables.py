"""The agenda's tables: appointments, prevention marks, preferences, feed tokens, the
reminder queue and the daily job's chunks

Revision ID: agenda_0001
Revises:
Create Date: 2026-11-24 09:00:00

The first revision of the agenda's own branch; it refers to `patients` (trunk 0001..0006).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "agenda_0001"
down_revision = None
branch_labels = ("agenda",)
depends_on = "0006"

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agenda_appointments",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column(
            "patient_id", sa.Integer, sa.ForeignKey("patients.id", name="fk_agenda_appointments_patient_id_patients"), nullable=False
        ),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("all_day", sa.Boolean, nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("place", sa.String(300), nullable=False),
        sa.Column("professional_address", sa.String(254), nullable=True),
        sa.Column("professional_name", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("source", sa.String(12), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("secret", sa.Boolean, nullable=False),
        sa.Column("uid", sa.String(255), nullable=True),
        sa.Column("recurrence_id", sa.String(40), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("dtstamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("organizer", sa.String(254), nullable=True),
        sa.Column("attendee", sa.String(254), nullable=True),
        sa.Column("message_id", sa.BigInteger, nullable=True),
        sa.Column("message_id_header", sa.String(998), nullable=True),
        sa.Column("conversation_key", sa.BigInteger, nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("patient_id", "uid", "recurrence_id", name="uq_agenda_appointments_patient_id"),
    )
    op.create_index("ix_agenda_appointments_patient_starts", "agenda_appointments", ["patient_id", "starts_at"])
    op.create_table(
        "agenda_prevention_marks",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column(
            "patient_id", sa.Integer, sa.ForeignKey("patients.id", name="fk_agenda_prevention_marks_patient_id_patients"), nullable=False
        ),
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("done_on", sa.Date, nullable=True),
        sa.Column("marked_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_agenda_prevention_marks_patient_id", "agenda_prevention_marks", ["patient_id"])
    op.create_table(
        "agenda_preferences",
        sa.Column(
            "patient_id", sa.Integer, sa.ForeignKey("patients.id", name="fk_agenda_preferences_patient_id_patients"), primary_key=True
        ),
        sa.Column("reminders", sa.Boolean, nullable=False),
        sa.Column("lead_days", sa.Integer, nullable=False),
        sa.Column("hour", sa.Integer, nullable=False),
        sa.Column("timezone", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "agenda_feed_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id", name="fk_agenda_feed_tokens_patient_id_patients"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer, nullable=False),
        sa.Column("shows_secret", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_agenda_feed_tokens_token_hash"),
    )
    op.create_index("ix_agenda_feed_tokens_patient_id", "agenda_feed_tokens", ["patient_id"])
    op.create_table(
        "agenda_reminders",
        sa.Column("id", BIG_ID, primary_key=True),
        sa.Column("patient_id", sa.Integer, sa.ForeignKey("patients.id", name="fk_agenda_reminders_patient_id_patients"), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("occurrence", sa.String(40), nullable=False),
        sa.Column("send_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("patient_id", "kind", "ref", "occurrence", name="uq_agenda_reminders_patient_id"),
    )
    op.create_index(
        "ix_agenda_reminders_due",
        "agenda_reminders",
        ["send_at"],
        postgresql_where=sa.text("state = 'scheduled'"),
        sqlite_where=sa.text("state = 'scheduled'"),
    )
    op.create_table(
        "agenda_daily_chunks",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("first_id", sa.Integer, primary_key=True),
        sa.Column("last_id", sa.Integer, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("found", sa.Integer, nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    for table in (
        "agenda_daily_chunks",
        "agenda_reminders",
        "agenda_feed_tokens",
        "agenda_preferences",
        "agenda_prevention_marks",
        "agenda_appointments",
    ):
        op.drop_table(table)
