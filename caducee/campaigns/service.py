"""The campaigns service: create, estimate, start (or schedule), pause, resume, cancel, recall, progress.

The HTTP API and the `caducee campaigns` command both call this. Starting stores the
message once through the gateway's accept pipeline (inspected, judged, signed with the
CNAM mailbox's certificate), counts who receives it and why the others do not (the rules,
as sets), and sends it: the campaign takes the next place in the order of sent campaigns
and the highest patient id it may reach, and from that commit on every targeted patient
has it, filed into their inbox when the webmail opens it (`deliveries`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.annuaire import targets
from caducee.annuaire.targets import Criteria
from caducee.campaigns import message, targeting
from caducee.campaigns.models import Campaign, CampaignFileProblem
from caducee.campaigns.targetfile import FileReport, Source, load
from caducee.config import Settings
from caducee.db import inserted_id
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.mailbox import fanout

ACTIVE = ("scheduled", "starting", "sent", "paused")
# One row, created by its first use (a database emptied table by table has none).
_NEXT_SEQ = text(
    "INSERT INTO campaign_sequence (id, last) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET last = campaign_sequence.last + 1 RETURNING last"
)


class CampaignError(ValueError):
    """A request that cannot be done as asked; `status` is the HTTP status to answer with."""

    def __init__(self, text: str, status: int = 409) -> None:
        super().__init__(text)
        self.status = status


@dataclass(frozen=True)
class Progress:
    id: int
    reference: str
    state: str
    send_at: datetime | None
    targeted: int
    delivered: int
    skipped: dict[str, int]
    read: int
    recalled: int
    read_before_recall: int
    file: dict[str, object] | None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "reference": self.reference,
            "state": self.state,
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "targeted": self.targeted,
            "delivered": self.delivered,
            "skipped": self.skipped,
            "read": self.read,
            "recalled": self.recalled,
            "read_before_recall": self.read_before_recall,
            "file": self.file,
        }


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


class Campaigns:
    def __init__(self, engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None) -> None:
        self.engine = engine
        self.settings = settings
        self.pipeline = pipeline

    # ---- creating --------------------------------------------------------------------

    async def create(
        self,
        sender: str,
        *,
        subject: str,
        body: str,
        criteria: Criteria,
        reference: str = "",
        pdf: bytes | None = None,
        pdf_name: str | None = None,
        send_at: datetime | None = None,
        target_file: Source | None = None,
    ) -> tuple[int, FileReport | None]:
        """A draft campaign; with `target_file`, its INS are loaded (and the file refused
        whole, raising, when its signature is not the CNAM's: nothing is kept)."""
        if not subject.strip() or not body.strip():
            raise CampaignError("a campaign needs a subject and a text", 422)
        if pdf is not None and not pdf.startswith(b"%PDF-"):
            raise CampaignError("the attachment is not a PDF", 422)
        async with self.engine.begin() as conn:
            campaign_id = inserted_id(
                await conn.execute(
                    Campaign.__table__.insert().values(
                        reference=reference[:128],
                        sender=sender.lower(),
                        subject=subject.strip()[:250],
                        body=body,
                        pdf=pdf,
                        pdf_name=(pdf_name or "document.pdf")[:200] if pdf is not None else None,
                        criteria=targeting.criteria_to_json(criteria),
                        uses_file=target_file is not None,
                        state="draft",
                        send_at=send_at,
                        targeted=0,
                        skipped="{}",
                        file_rows=0,
                        file_problems="{}",
                        recalled=0,
                        read_before_recall=0,
                        created_at=datetime.now(UTC),
                    )
                )
            )
            report = None
            if target_file is not None:
                report = await load(conn, campaign_id, target_file)
                await conn.execute(
                    update(Campaign)
                    .where(Campaign.id == campaign_id)
                    .values(file_rows=report.rows, file_problems=json.dumps(report.problems, sort_keys=True))
                )
        return int(campaign_id), report

    async def _row(self, conn: AsyncConnection, campaign_id: int, sender: str | None, *, lock: bool = False):  # type: ignore[no-untyped-def]
        query = select(Campaign).where(Campaign.id == campaign_id)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None or (sender is not None and row.sender != sender.lower()):
            raise CampaignError("no such campaign", 404)
        return row

    async def estimate(self, sender: str, criteria: Criteria, campaign_id: int | None = None) -> targeting.Estimate:
        """How many would receive it, and why the others would not: before anything is sent."""
        async with self.engine.connect() as conn:
            uses_file = False
            if campaign_id is not None:
                row = await self._row(conn, campaign_id, sender)
                criteria, uses_file = targeting.criteria_from_json(row.criteria), bool(row.uses_file)
            facts = targeting.recipients(criteria, campaign_id=campaign_id, uses_file=uses_file)
            return await targeting.estimate(conn, facts, targeting.set_decision(sender))

    # ---- the lifecycle -----------------------------------------------------------------

    async def start(self, campaign_id: int, sender: str | None = None) -> str:
        """Start now, or schedule for `send_at`; the new state."""
        async with self.engine.begin() as conn:
            row = await self._row(conn, campaign_id, sender, lock=True)
            if row.state != "draft":
                raise CampaignError(f"the campaign is {row.state}, not a draft")
            due = _aware(row.send_at)
            state = "scheduled" if due is not None and due > datetime.now(UTC) else "starting"
            await conn.execute(update(Campaign).where(Campaign.id == campaign_id, Campaign.state == "draft").values(state=state))
        if state == "starting":
            await self.prepare(campaign_id)
        return await self.state(campaign_id)

    async def state(self, campaign_id: int) -> str:
        async with self.engine.connect() as conn:
            return str((await conn.execute(select(Campaign.state).where(Campaign.id == campaign_id))).scalar_one())

    async def due(self) -> list[int]:
        """Scheduled campaigns whose time has come, and starts interrupted half way."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(Campaign.id, Campaign.state, Campaign.send_at).where(Campaign.state.in_(("scheduled", "starting")))
            )
            now = datetime.now(UTC)
            return [int(r.id) for r in rows if r.state == "starting" or (_aware(r.send_at) or now) <= now]

    async def prepare(self, campaign_id: int) -> bool:
        """Store the message once, count, and send. Safe to repeat after a crash: the
        message is stored only if it was not, and the counts, the seq and the cutoff are
        written by the one transaction that marks the campaign sent. True if this call sent it."""
        async with self.engine.begin() as conn:
            row = await self._row(conn, campaign_id, None)
        if row.state == "scheduled":
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(Campaign).where(Campaign.id == campaign_id, Campaign.state == "scheduled").values(state="starting")
                )
        elif row.state != "starting":
            return False
        message_id = row.message_id
        if message_id is None:
            message_id = await self._store(row)
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(Campaign)
                    .where(Campaign.id == campaign_id, Campaign.message_id.is_(None))
                    .values(message_id=message_id, pdf=None)
                )
                message_id = (await conn.execute(select(Campaign.message_id).where(Campaign.id == campaign_id))).scalar_one()
        criteria = targeting.criteria_from_json(row.criteria)
        decision = targeting.set_decision(row.sender)
        facts = targeting.recipients(criteria, campaign_id=campaign_id, uses_file=bool(row.uses_file))
        async with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":  # take the write lock first: a read that later writes could find its snapshot stale
                await conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(state=Campaign.state))
            current = await self._row(conn, campaign_id, None, lock=True)
            if current.state != "starting":
                return False
            cutoff = await targets.last_patient_id(conn)
            counted = await targeting.estimate(conn, facts, decision)
            # The next seq: this row stays locked until the commit, so campaigns become
            # visible in seq order and no inbox's mark can pass one still being sent.
            seq = (await conn.execute(_NEXT_SEQ)).scalar_one()
            now = datetime.now(UTC)
            await conn.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(
                    state="sent",
                    seq=seq,
                    patient_cutoff=cutoff,
                    targeted=counted.targeted,
                    receiving=counted.receiving,
                    skipped=json.dumps(counted.skipped, sort_keys=True),
                    started_at=now,
                    finished_at=now,
                )
            )
        return True

    async def _store(self, row) -> int:  # type: ignore[no-untyped-def]
        if self.pipeline is None:
            raise CampaignError("this process cannot send (no accept pipeline)", 503)
        raw = message.build(row.sender, row.subject, row.body, hostname=self.settings.hostname, pdf=row.pdf, pdf_name=row.pdf_name)
        envelope = Envelope(mail_from=row.sender, rcpt_tos=[], data=raw, channel=Channel.API, authenticated=row.sender)
        message_id, refused = await self.pipeline.store_once(envelope)
        if refused is not None:
            async with self.engine.begin() as conn:
                await conn.execute(update(Campaign).where(Campaign.id == row.id).values(state="cancelled", finished_at=datetime.now(UTC)))
            raise CampaignError(f"the message was refused: {refused.text_en} / {refused.text_fr}", 422)
        return message_id

    async def _move(self, campaign_id: int, sender: str | None, allowed: tuple[str, ...], new: str) -> str:
        async with self.engine.begin() as conn:
            row = await self._row(conn, campaign_id, sender, lock=True)
            if row.state not in allowed:
                raise CampaignError(f"the campaign is {row.state}: it cannot be {new}")
            values: dict[str, object] = {"state": new}
            if new == "cancelled":
                values["finished_at"] = datetime.now(UTC)
            await conn.execute(update(Campaign).where(Campaign.id == campaign_id).values(**values))
        return new

    async def pause(self, campaign_id: int, sender: str | None = None) -> str:
        """Stop filing it into inboxes not opened yet (those that have it keep it)."""
        return await self._move(campaign_id, sender, ("sent", "scheduled"), "paused")

    async def resume(self, campaign_id: int, sender: str | None = None) -> str:
        async with self.engine.connect() as conn:
            row = await self._row(conn, campaign_id, sender)
        return await self._move(campaign_id, sender, ("paused",), "sent" if row.seq is not None else "scheduled")

    async def cancel(self, campaign_id: int, sender: str | None = None) -> str:
        """Never file it again (inboxes that have it keep it: a recall takes it back)."""
        return await self._move(campaign_id, sender, ("draft", "scheduled", "starting", "sent", "paused"), "cancelled")

    async def recall(self, campaign_id: int, sender: str | None = None) -> Progress:
        """Take the campaign back from every inbox where it was not read yet; count where it was.

        The campaign row is locked first: an inbox being filed holds it shared
        (`deliveries`), so the recall waits for it, and no inbox is filed with it after (its
        state is no longer sent). Inboxes never opened never get it.
        """
        async with self.engine.begin() as conn:
            row = await self._row(conn, campaign_id, sender, lock=True)
            if row.state in ("recalled", "draft"):
                raise CampaignError(f"the campaign is {row.state}: nothing to recall")
            removed, read = (0, 0) if row.message_id is None else await fanout.recall(conn, row.message_id)
            await conn.execute(
                update(Campaign)
                .where(Campaign.id == campaign_id)
                .values(state="recalled", recalled=removed, read_before_recall=read, finished_at=datetime.now(UTC))
            )
        return await self.progress(campaign_id, sender)

    # ---- what the CNAM may know: counts ---------------------------------------------------

    async def progress(self, campaign_id: int, sender: str | None = None) -> Progress:
        async with self.engine.connect() as conn:
            row = await self._row(conn, campaign_id, sender)
            delivered = int(row.receiving) if row.seq is not None else 0  # from the sending commit on, all of them have it
            read = 0
            if row.message_id is not None and row.state != "recalled":
                _, read = await fanout.reach(conn, row.message_id)
            file = None
            if row.uses_file:
                file = {"rows": int(row.file_rows), "problems": json.loads(row.file_problems or "{}")}
        return Progress(
            id=int(row.id),
            reference=row.reference,
            state=row.state,
            send_at=_aware(row.send_at),
            targeted=int(row.targeted),
            delivered=int(delivered),
            skipped=json.loads(row.skipped or "{}"),
            read=int(read if row.state != "recalled" else row.read_before_recall),
            recalled=int(row.recalled),
            read_before_recall=int(row.read_before_recall),
            file=file,
        )

    async def problems(self, campaign_id: int, sender: str | None = None, *, limit: int = 1000) -> list[dict[str, object]]:
        """The target file's bad lines (line number, problem, detail), first `limit`."""
        async with self.engine.connect() as conn:
            await self._row(conn, campaign_id, sender)
            rows = await conn.execute(
                select(CampaignFileProblem.line_no, CampaignFileProblem.problem, CampaignFileProblem.detail)
                .where(CampaignFileProblem.campaign_id == campaign_id)
                .order_by(CampaignFileProblem.line_no)
                .limit(limit)
            )
            return [{"line": int(r.line_no), "problem": r.problem, "detail": r.detail} for r in rows]

    async def list(self, sender: str | None = None) -> list[Progress]:
        async with self.engine.connect() as conn:
            query = select(Campaign.id).order_by(Campaign.id)
            if sender is not None:
                query = query.where(Campaign.sender == sender.lower())
            ids = [int(i) for i in (await conn.execute(query)).scalars()]
        return [await self.progress(i) for i in ids]


async def campaign_messages(conn: AsyncConnection, message_ids: list[int]) -> set[int]:
    """Which of these stored messages are a campaign's (stored once, fanned out later: kept)."""
    rows = await conn.execute(select(Campaign.message_id).where(Campaign.message_id.in_(message_ids)))
    return {int(row[0]) for row in rows if row[0] is not None}
