"""Mailbox: UIDVALIDITY that only grows, \\Recent per folder, subscriptions kept apart from folders

Revision ID: mailbox_0001
Revises:
Create Date: 2026-12-02 09:00:00

The first revision of the mailbox component's own branch (see `caducee.db.migration_locations`).

- `folder_uidvalidity`: the last UIDVALIDITY given, for all mailboxes. They were random, so
  a folder deleted and created again could get a smaller one (RFC 3501 2.3.1.1 wants it
  larger) and, with SQLite reusing the id of the last row deleted, the same id: caches keyed
  on the id served the old folder's state. Starts above every value in use.
- `folders.first_recent_uid`: UIDs from it on are \\Recent for the next session to learn of
  them. Messages already stored are not recent.
- `folders.keywords`: the keywords ever set in the folder (FLAGS lists them, so that every
  session announces the same ones); filled from the keywords entries carry now.
- `folder_subscriptions`: subscriptions are names (RFC 3501 6.3.6: deleting a folder does not
  unsubscribe it, and one may subscribe to a name that has no folder); copied from the
  `folders.subscribed` column, which goes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mailbox_0001"
down_revision = None
branch_labels = ("mailbox",)
depends_on = "0006"


def upgrade() -> None:
    op.add_column("folders", sa.Column("first_recent_uid", sa.BigInteger(), nullable=False, server_default="1"))
    op.execute("UPDATE folders SET first_recent_uid = uidnext")
    op.add_column("folders", sa.Column("keywords", sa.Text(), nullable=False, server_default=""))
    _fill_keywords()
    op.create_table(
        "folder_uidvalidity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("last", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_folder_uidvalidity")),
    )
    op.execute("INSERT INTO folder_uidvalidity (id, last) SELECT 1, COALESCE(MAX(uidvalidity), 0) FROM folders")
    op.create_table(
        "folder_subscriptions",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("mailbox_id", "name", name=op.f("pk_folder_subscriptions")),
    )
    op.execute("INSERT INTO folder_subscriptions (mailbox_id, name) SELECT mailbox_id, name FROM folders WHERE subscribed")
    # A plain ALTER TABLE on both databases (SQLite has had DROP COLUMN since 3.35): a batch
    # copy of `folders` would have to drop a table that mailbox_entries references.
    op.drop_column("folders", "subscribed")


def _fill_keywords() -> None:
    connection = op.get_bind()
    found: dict[int, set[str]] = {}
    rows = connection.execute(sa.text("SELECT folder_id, flags FROM mailbox_entries WHERE expunged_modseq IS NULL AND flags <> ''"))
    for folder_id, flags in rows:
        keywords = {flag for flag in flags.split() if not flag.startswith("\\")}
        if keywords:
            found.setdefault(folder_id, set()).update(keywords)
    for folder_id, keywords in found.items():
        connection.execute(sa.text("UPDATE folders SET keywords = :k WHERE id = :id"), {"k": " ".join(sorted(keywords)), "id": folder_id})


def downgrade() -> None:
    op.add_column("folders", sa.Column("subscribed", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE folders SET subscribed = TRUE WHERE EXISTS (SELECT 1 FROM folder_subscriptions s "
        "WHERE s.mailbox_id = folders.mailbox_id AND s.name = folders.name)"
    )
    op.drop_table("folder_subscriptions")
    op.drop_table("folder_uidvalidity")
    op.drop_column("folders", "keywords")
    op.drop_column("folders", "first_recent_uid")
