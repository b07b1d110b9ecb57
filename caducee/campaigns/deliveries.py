"""Campaigns filed into a patient's inbox when the webmail opens it (fan-out on read).

Sending a campaign writes nothing per patient (`service.prepare`): it gets the next `seq`
in the order campaigns are sent and the highest patient id it may reach. Every request of
the webmail asks `Deliveries.materialise` for the profiles it shows; for an inbox not yet
filed down to the last `seq`, one transaction:

1. takes the inbox's row of `campaign_inboxes` (created if new) as its first write: on
   PostgreSQL `FOR UPDATE`, on SQLite the database's write lock, so two requests or two
   nodes filing the same inbox take turns, and the second finds nothing left to do;
2. reads the campaigns sent since (`seq` above the row's `seen_upto`), held `FOR SHARE`
   on PostgreSQL so a recall (`FOR UPDATE`) waits for this filing and none starts after it;
3. asks, for each campaign being sent, whether the policy chain accepts this patient
   (the same set query as the estimate, restricted to one patient id and the cutoff);
4. files the accepted ones (`mailbox.fanout.file_campaigns`: one UID reservation) and
   moves the row's mark, in the same commit: a process killed in the middle leaves the
   inbox as it was, and the next request files it whole. Exactly once, on both databases.

A paused campaign is skipped but holds the mark below it (`decided` lists the later ones
filed meanwhile), so it is filed once resumed; a cancelled or recalled one is passed over.
The per-process memory of marks makes a request that has nothing to file cost one read of
the last `seq`. Several inboxes (a guardian's profiles, or an operator filing ahead) are
filed in one transaction, in mailbox order (the order every writer of folders locks in),
with one targeting query per campaign for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.annuaire import targets
from caducee.campaigns import targeting
from caducee.campaigns.models import Campaign, CampaignInbox
from caducee.mailbox import fanout
from caducee.policies.sets import SetDecision

SENDING = "sent"
HOLDING = "paused"
CACHE_ITEMS = 100_000

_TAKE = text("INSERT INTO campaign_inboxes (mailbox_id, seen_upto, decided) VALUES (:m, 0, '') ON CONFLICT (mailbox_id) DO NOTHING")
_MOVE = text("UPDATE campaign_inboxes SET seen_upto = :seen, decided = :decided WHERE mailbox_id = :m")


def advance(seen_upto: int, decided: set[int], later: list[tuple[int, str]]) -> tuple[int, set[int]]:
    """The new mark: past every campaign decided or never to be filed, stopping below the
    first paused one; the seqs decided above the mark are kept."""
    mark = seen_upto
    for seq, state in sorted(later):
        if seq in decided or state != HOLDING:
            mark = seq
            continue
        break
    return mark, {seq for seq in decided if seq > mark}


class Deliveries:
    """Files campaigns into inboxes as the webmail opens them; one per process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._marks: dict[int, int] = {}  # mailbox id -> seen_upto this process knows is committed
        self._decisions: dict[str, SetDecision] = {}

    def _decision(self, sender: str) -> SetDecision:
        if sender not in self._decisions:
            self._decisions[sender] = targeting.set_decision(sender)
        return self._decisions[sender]

    async def last_seq(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.max(Campaign.seq)))).scalar() or 0)

    async def materialise(self, recipients: Sequence[tuple[int, int]], *, chunk: int = 200) -> int:
        """File what is due into each (patient id, mailbox id); the entries made."""
        last = await self.last_seq()
        pending = sorted({(m, p) for p, m in recipients if self._marks.get(m, -1) < last})
        if not pending:
            return 0
        async with self.engine.connect() as conn:  # marks another process committed: a read, no write transaction
            for start in range(0, len(pending), 1000):
                rows = await conn.execute(
                    select(CampaignInbox.mailbox_id, CampaignInbox.seen_upto).where(
                        CampaignInbox.mailbox_id.in_([m for m, _ in pending[start : start + 1000]])
                    )
                )
                for mailbox_id, seen_upto in rows:
                    self._remember(int(mailbox_id), int(seen_upto))
        pending = [(m, p) for m, p in pending if self._marks.get(m, -1) < last]
        made = 0
        for start in range(0, len(pending), chunk):
            made += await self._file(pending[start : start + chunk])
        return made

    async def _file(self, inboxes: list[tuple[int, int]]) -> int:
        """Some inboxes (mailbox id, patient id), in mailbox order, in one transaction (see the module's docstring)."""
        mailbox_ids = [m for m, _ in inboxes]
        async with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            await conn.execute(_TAKE, [{"m": m} for m in mailbox_ids])
            query = (
                select(CampaignInbox.mailbox_id, CampaignInbox.seen_upto, CampaignInbox.decided)
                .where(CampaignInbox.mailbox_id.in_(mailbox_ids))
                .order_by(CampaignInbox.mailbox_id)
            )
            marks = {
                int(r.mailbox_id): (int(r.seen_upto), {int(s) for s in r.decided.split()})
                for r in await conn.execute(query.with_for_update() if postgres else query)
            }
            later = select(Campaign).where(Campaign.seq > min(seen for seen, _ in marks.values())).order_by(Campaign.seq)
            campaigns = (await conn.execute(later.with_for_update(read=True) if postgres else later)).all()
            reached = {int(c.seq): await self._reached(conn, c, [p for _, p in inboxes]) for c in campaigns if c.state == SENDING}
            filing: dict[int, list[tuple[int, datetime]]] = {}
            moved: list[dict[str, object]] = []
            for mailbox_id, patient_id in inboxes:
                seen_upto, decided = marks[mailbox_id]
                mine = [c for c in campaigns if int(c.seq) > seen_upto]
                due = [c for c in mine if c.state == SENDING and int(c.seq) not in decided]
                wanted = [(int(c.message_id), _aware(c.started_at) or datetime.now(UTC)) for c in due if patient_id in reached[int(c.seq)]]
                filing[mailbox_id] = wanted
                mark, above = advance(seen_upto, decided | {int(c.seq) for c in due}, [(int(c.seq), c.state) for c in mine])
                moved.append({"m": mailbox_id, "seen": mark, "decided": " ".join(str(s) for s in sorted(above))})
            made = await fanout.file_campaigns(conn, filing)
            await conn.execute(_MOVE, moved)
        for row in moved:
            self._remember(int(row["m"]), int(row["seen"]))  # type: ignore[call-overload]
        return made

    async def _reached(self, conn: AsyncConnection, campaign, patient_ids: list[int]) -> set[int]:  # type: ignore[no-untyped-def]
        """Which of `patient_ids` the chain lets `campaign` reach: one set query."""
        if campaign.patient_cutoff is None or campaign.message_id is None:
            return set()
        eligible = [p for p in patient_ids if p <= int(campaign.patient_cutoff)]
        if not eligible:
            return set()
        facts = targeting.recipients(
            targeting.criteria_from_json(campaign.criteria), campaign_id=int(campaign.id), uses_file=bool(campaign.uses_file)
        )
        accepted = targeting.accepted(targets.among(facts, eligible), self._decision(campaign.sender)).subquery()
        return {int(p) for p in (await conn.execute(select(accepted.c.patient_id))).scalars()}

    def _remember(self, mailbox_id: int, mark: int) -> None:
        if len(self._marks) > CACHE_ITEMS:
            self._marks.clear()
        self._marks[mailbox_id] = mark


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)
