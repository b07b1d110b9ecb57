"""Tables of the campaigns component.

A campaign to 65 million patients is one `campaigns` row and, in the mailbox store, one
message; each patient's entry is made when the webmail first opens that patient's inbox
(`deliveries`), and `campaign_inboxes` keeps, for each inbox opened since, how far down the
order of sent campaigns it has been filed. A target file adds one `campaign_targets` row
per distinct INS it lists and one `campaign_file_problems` row per bad line. Nothing here
says which patient read what: the CNAM gets counts only.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.core.ids import BigId
from caducee.db import Base


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_state", "state", "send_at"), Index("ix_campaigns_seq", "seq", unique=True))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(128), default="")  # the CNAM's own name for it
    sender: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(250))
    body: Mapped[str] = mapped_column(Text)
    pdf_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    pdf: Mapped[bytes | None] = mapped_column(nullable=True)  # kept until the message is stored, then dropped
    criteria: Mapped[str] = mapped_column(Text, default="{}")  # JSON (targeting.Criteria)
    uses_file: Mapped[bool] = mapped_column(Boolean, default=False)
    # draft / scheduled / starting / sent / paused / cancelled / recalled
    state: Mapped[str] = mapped_column(String(12), default="draft")
    send_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # the mailbox store's message, stored once
    # Set when sent: its place in the order campaigns were sent (an inbox is filed down that
    # order), the highest patient id it may reach (profiles created later do not get it),
    # and how many profiles the rules let it reach (what "delivered" reports).
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    patient_cutoff: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    receiving: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    targeted: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[str] = mapped_column(Text, default="{}")  # JSON {reason: count}, decided at start by the rules
    file_rows: Mapped[int] = mapped_column(BigInteger, default=0)
    file_problems: Mapped[str] = mapped_column(Text, default="{}")  # JSON {invalid/unknown/duplicate: count}
    recalled: Mapped[int] = mapped_column(BigInteger, default=0)
    read_before_recall: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CampaignSequence(Base):
    """The last `seq` given (one row): taking the next one locks this row until the sending
    transaction commits, so campaigns become visible in the order of their `seq`."""

    __tablename__ = "campaign_sequence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last: Mapped[int] = mapped_column(BigInteger)


class CampaignInbox(Base):
    """How far one patient's inbox has been filed: every campaign up to `seen_upto` is either
    in it or not for this patient, and so are the ones listed in `decided` (seqs above
    `seen_upto`, space-separated: sent campaigns filed while an earlier one was paused)."""

    __tablename__ = "campaign_inboxes"

    mailbox_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # annuaire mailboxes.id
    seen_upto: Mapped[int] = mapped_column(BigInteger)
    decided: Mapped[str] = mapped_column(Text, default="", server_default="")


class CampaignTarget(Base):
    """A distinct INS of a campaign's target file and the profile it names (none: unknown here)."""

    __tablename__ = "campaign_targets"
    __table_args__ = (Index("ix_campaign_targets_patient", "campaign_id", "patient_id"),)

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    ins: Mapped[str] = mapped_column(String(15), primary_key=True)
    patient_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # annuaire patients.id


class CampaignFileProblem(Base):
    """A bad line of a target file (wrong INS key, unknown INS, duplicate): reported, never fatal."""

    __tablename__ = "campaign_file_problems"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    problem: Mapped[str] = mapped_column(String(12))  # invalid / unknown / duplicate
    detail: Mapped[str] = mapped_column(String(300), default="")


class ApiToken(Base):
    """A campaign API token: its SHA-256 only (a 256-bit random token needs no slow hash)."""

    __tablename__ = "campaign_api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sender: Mapped[str] = mapped_column(String(254))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEntry(Base):
    """Every call of the campaign API, accepted or refused (append-only)."""

    __tablename__ = "campaign_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sender: Mapped[str] = mapped_column(String(254), default="")
    client: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(String(500), default="")
