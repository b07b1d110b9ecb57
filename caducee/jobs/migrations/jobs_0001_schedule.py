"""Jobs: the schedule and leases of periodic jobs

Revision ID: jobs_0001
Revises:
Create Date: 2026-12-10 10:00:00

The first revision of the job runner's own branch; its table refers to no other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "jobs_0001"
down_revision = None
branch_labels = ("jobs",)
depends_on = "0006"


def upgrade() -> None:
    op.create_table(
        "jobs_schedule",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("next_run_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("last_finished_at", sa.Float(), nullable=False),
        sa.Column("last_result", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("jobs_schedule")
