"""Annuaire: what a population import paid per patient and no query used: foreign-key triggers (PostgreSQL), empty places in indexes

Revision ID: annuaire_0001
Revises:
Create Date: 2026-12-03 09:00:00

The first revision of the annuaire's own branch. PostgreSQL checks a foreign key with a
trigger per inserted row, which looks the patient up and locks it (`FOR KEY SHARE`, a WAL
record each): on a population import that was more than the insert of the row itself
(8 us of the server's time per row and per constraint, measured on 200,000 patients), for
a check that cannot fail, since the import writes these rows from the patients it has just
inserted, in the same statement or transaction, and patients are never deleted (a profile
is closed, not removed). So `mailboxes.patient_id` and `guardianships.guardian_id` /
`minor_id` keep their indexes and lose the constraint on PostgreSQL, as the professionals'
links did (docs/architecture.md, "Population import").

SQLite keeps them: its check is one index lookup, and dropping a constraint there means
rebuilding the table, whose DROP would, with foreign keys on, cascade into the mailboxes'
certificates.

`ix_mailboxes_postcode` and `ix_mailboxes_city_search` become partial (non-empty values
only), on both databases: a patient's mailbox has neither, so each national import wrote
66 million entries of '' into each, 2 us a row on PostgreSQL, that the directory search
(which looks for a postcode or city prefix among professionals) never reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "annuaire_0001"
down_revision = None
branch_labels = ("annuaire",)
depends_on = "0006"

DROPPED = {  # name: (table, column)
    "fk_mailboxes_patient_id_patients": ("mailboxes", "patient_id"),
    "fk_guardianships_guardian_id_patients": ("guardianships", "guardian_id"),
    "fk_guardianships_minor_id_patients": ("guardianships", "minor_id"),
}


PLACES = {"ix_mailboxes_postcode": "postcode", "ix_mailboxes_city_search": "city_search"}


def upgrade() -> None:
    for name, column in PLACES.items():
        op.drop_index(name, table_name="mailboxes")
        where = sa.text(f"{column} <> ''")
        op.create_index(name, "mailboxes", [column], postgresql_where=where, sqlite_where=where)
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, _column) in DROPPED.items():
        op.drop_constraint(name, table, type_="foreignkey")


def downgrade() -> None:
    for name, column in PLACES.items():
        op.drop_index(name, table_name="mailboxes")
        op.create_index(name, "mailboxes", [column])
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, (table, column) in DROPPED.items():
        op.create_foreign_key(name, table, "patients", [column], ["id"])
