"""Access history: a hash chain per patient, the heads table, who acted for which structure
under which right, and triggers that refuse UPDATE and DELETE.

Revision ID: h0001
Revises:
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h0001"
down_revision = None
branch_labels = ("history",)
depends_on = "0006"

SQLITE_TRIGGERS = (
    "CREATE TRIGGER access_history_no_update BEFORE UPDATE ON access_history "
    "BEGIN SELECT RAISE(ABORT, 'access_history is append-only'); END",
    "CREATE TRIGGER access_history_no_delete BEFORE DELETE ON access_history "
    "BEGIN SELECT RAISE(ABORT, 'access_history is append-only'); END",
)
PG_TRIGGERS = (
    "CREATE FUNCTION access_history_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'access_history is append-only'; END $$",
    "CREATE TRIGGER access_history_append_only BEFORE UPDATE OR DELETE ON access_history "
    "FOR EACH ROW EXECUTE FUNCTION access_history_append_only()",
)


def upgrade() -> None:
    with op.batch_alter_table("access_history") as batch:
        batch.add_column(sa.Column("structure", sa.String(256), nullable=False, server_default=""))
        batch.add_column(sa.Column("access_right", sa.String(16), nullable=False, server_default=""))
        batch.add_column(sa.Column("hidden_from_guardians", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("entry_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_access_history_patient_seq", ["patient_id", "seq"])
    op.create_table(
        "access_history_heads",
        sa.Column("patient_id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
    )
    for statement in PG_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER access_history_append_only ON access_history")
        op.execute("DROP FUNCTION access_history_append_only()")
    else:
        op.execute("DROP TRIGGER access_history_no_update")
        op.execute("DROP TRIGGER access_history_no_delete")
    op.drop_table("access_history_heads")
    with op.batch_alter_table("access_history") as batch:
        batch.drop_constraint("uq_access_history_patient_seq", type_="unique")
        for column in ("entry_hash", "prev_hash", "seq", "hidden_from_guardians", "access_right", "structure"):
            batch.drop_column(column)
