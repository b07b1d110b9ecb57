"""Identity: Pro Santé Connect sign-ins under way, professional portal sessions

Revision ID: identity_0001
Revises:
Create Date: 2026-11-24 09:00:00

The first revision of the identity component's own branch. Its tables refer to no other
component's (a session names the professional by national id, the annuaire's natural key),
so it depends on the trunk only to come after it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "identity_0001"
down_revision = None
branch_labels = ("identity",)
depends_on = "0006"


def upgrade() -> None:
    op.create_table(
        "identity_login_states",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("browser", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_identity_login_states_expires_at", "identity_login_states", ["expires_at"])
    op.create_table(
        "identity_pro_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("national_id", sa.String(40), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("acr", sa.String(64), nullable=False),
        sa.Column("provider_session", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_identity_pro_sessions_national_id", "identity_pro_sessions", ["national_id"])


def downgrade() -> None:
    op.drop_table("identity_pro_sessions")
    op.drop_table("identity_login_states")
