"""Dossier: documents (sealed titles, bodies stored once in dossier_blobs), settings, blocks,
consents, emergency accesses, professionals already known, the medical profile, intakes

Revision ID: d0001
Revises:
Create Date: 2026-12-02 03:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d0001"
down_revision = None
branch_labels = ("dossier",)
depends_on = "0006"

TABLES = (
    "dossier_documents",
    "dossier_settings",
    "dossier_profile_items",
    "dossier_known_professionals",
    "dossier_intakes",
    "dossier_emergencies",
    "dossier_consents",
    "dossier_blocks",
    "dossier_blobs",
)


def upgrade() -> None:
    op.create_table(
        "dossier_blobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dossier_blobs")),
        sa.UniqueConstraint("sha256", name=op.f("uq_dossier_blobs_sha256")),
    )
    op.create_table(
        "dossier_blocks",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("national_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "national_id", name=op.f("pk_dossier_blocks")),
    )
    op.create_table(
        "dossier_consents",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("national_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("structure", sa.String(length=256), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "national_id", name=op.f("pk_dossier_consents")),
    )
    op.create_table(
        "dossier_emergencies",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("national_id", sa.String(length=40), nullable=False),
        sa.Column("structure", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dossier_emergencies")),
    )
    op.create_index("ix_dossier_emergencies_who", "dossier_emergencies", ["patient_id", "national_id", "expires_at"], unique=False)
    op.create_table(
        "dossier_intakes",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "patient_id", name=op.f("pk_dossier_intakes")),
    )
    op.create_table(
        "dossier_known_professionals",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("national_id", sa.String(length=40), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "national_id", name=op.f("pk_dossier_known_professionals")),
    )
    op.create_table(
        "dossier_profile_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("section", sa.String(length=16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dossier_profile_items")),
    )
    op.create_index("ix_dossier_profile_items_patient", "dossier_profile_items", ["patient_id", "section"], unique=False)
    op.create_table(
        "dossier_settings",
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("emergency_refused", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_dossier_settings")),
    )
    op.create_table(
        "dossier_documents",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("unique_id", sa.String(length=128), nullable=False),
        sa.Column("lineage", sa.BigInteger(), nullable=True),
        sa.Column("replaces", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("type_code", sa.String(length=16), nullable=False),
        sa.Column("class_code", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=64), nullable=False),
        sa.Column("title", sa.LargeBinary(), nullable=False),
        sa.Column("filename", sa.String(length=128), nullable=False),
        sa.Column("care_date", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deposited_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("author_name", sa.String(length=256), nullable=False),
        sa.Column("author_structure", sa.String(length=256), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("blob_id", sa.BigInteger(), nullable=False),
        sa.Column("masked", sa.Boolean(), nullable=False),
        sa.Column("invisible_patient", sa.Boolean(), nullable=False),
        sa.Column("invisible_guardians", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("NOT (masked AND invisible_patient)", name=op.f("ck_dossier_documents_not_masked_and_invisible")),
        sa.ForeignKeyConstraint(["blob_id"], ["dossier_blobs.id"], name=op.f("fk_dossier_documents_blob_id_dossier_blobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dossier_documents")),
        sa.UniqueConstraint("patient_id", "unique_id", name="uq_dossier_documents_patient_unique_id"),
    )
    op.create_index("ix_dossier_documents_list", "dossier_documents", ["patient_id", "status", "care_date"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dossier_documents_list", "dossier_documents")
    op.drop_index("ix_dossier_profile_items_patient", "dossier_profile_items")
    op.drop_index("ix_dossier_emergencies_who", "dossier_emergencies")
    for table in TABLES:
        op.drop_table(table)
