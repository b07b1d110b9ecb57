"""Webmail: no foreign-key trigger on the activation codes a population import issues in bulk (PostgreSQL)

Revision ID: wa002
Revises: wa001
Create Date: 2026-12-03 09:00:00

A national population import issues one provisional code per new profile, 66 million rows
through COPY; PostgreSQL checked each against `patients` with a trigger that looked the
patient up and locked it: 9 us of the server's time per code against 2 us for the row
itself (measured on 200,000 codes). Codes are only ever issued for a patient just read or
just created, and patients are never deleted, so the constraint guarded nothing the code
does not already. SQLite keeps it (one index lookup; dropping it would rebuild the table).
"""

from __future__ import annotations

from alembic import op

revision = "wa002"
down_revision = "wa001"
branch_labels = None
depends_on = None

NAME = "fk_webmail_activation_codes_patient_id_patients"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(NAME, "webmail_activation_codes", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_foreign_key(NAME, "webmail_activation_codes", "patients", ["patient_id"], ["id"])
