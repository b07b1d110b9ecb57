"""Annuaire: drop the mailbox indexes no query uses

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 06:00:00

`mailboxes.professional_national_id` and `mailboxes.structure_key` are only ever joined
from the mailbox side (to the unique keys of professionals and structures), and
`profession_code` holds a few dozen values, one of them on about half the rows: none of
the three indexes served a query, and each was maintained for every row of every import
(on PostgreSQL the three cost as much as the other five together).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

DROPPED = {
    "ix_mailboxes_professional_national_id": "professional_national_id",
    "ix_mailboxes_structure_key": "structure_key",
    "ix_mailboxes_profession_code": "profession_code",
}


def upgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch_op:
        for name in DROPPED:
            batch_op.drop_index(name)


def downgrade() -> None:
    with op.batch_alter_table("mailboxes") as batch_op:
        for name, column in DROPPED.items():
            batch_op.create_index(name, [column], unique=False)
