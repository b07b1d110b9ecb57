"""Invitations by mail: a professional's `text/calendar; method=REQUEST` (or CANCEL)
delivered to a patient becomes (or changes) an appointment in their agenda, linked to the
message and its conversation.

This is a durable post-delivery consumer of the gateway's pipeline (connected by
`server.py`, `caducee.gateway.postdelivery`): `wants_invitation`, pure and cheap, tells the
pipeline on the accept path which patients of a message may receive an invitation (a
professional's or an organisation's message that may hold a calendar part); a row is written
for each in the message's own commit, and `Intake.file` runs it after the commit, on a node
with the `http` role, again after a crash. It reads the stored message through the mailbox
component (opened as the readers open it) and the one MIME parser. Running a row again files
nothing twice: an appointment is its organiser's UID (and occurrence) in the patient's agenda,
and an invitation no newer than what is held (RFC 5546 sequence and stamp) changes nothing.
The message itself is delivered whatever becomes of its invitation; an invitation refused here
(malformed, too large, an organiser who is not the sender, a recipient who is not an attendee,
an unknown time zone, a date out of range) is only logged, with its reason and no content.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.agenda import ical, reminders, store
from caducee.agenda.times import zone
from caducee.annuaire import patients
from caducee.crypto.atrest import BodyCipher
from caducee.gateway.hooks import Delivered, DeliveredTo
from caducee.mailbox import conversations
from caducee.mime import structure
from caducee.policies import PartyKind

log = logging.getLogger(__name__)

CALENDAR_TYPES = ("text/calendar", "application/ics")
INVITERS = (PartyKind.PROFESSIONAL, PartyKind.ORGANISATION)


@dataclass(frozen=True)
class Outcome:
    """What became of one invitation: `applied` ("added", "updated", "cancelled", "stale"),
    or the reason it was refused."""

    applied: str | None
    reason: str = ""


def calendar_parts(raw: bytes, tree: structure.Part | None = None) -> list[bytes]:
    """The decoded bodies of the calendar parts of a message, signed wrappers opened,
    in order (the MIME parser bounds depth and parts); `tree`: the message's tree when the
    pipeline already parsed it."""
    found = []
    stack = [tree if tree is not None else structure.parse(raw)]
    while stack:
        part = stack.pop()
        if part.children:
            stack.extend(reversed(part.children))
        elif part.message is not None:
            stack.append(part.message)
        elif part.headers.get_content_type() in CALENDAR_TYPES:
            data = structure.decoded(part, part.body_bytes)
            if data is not None:
                charset = dict(part.headers.params("content-type")[1]).get("charset", "utf-8")
                try:
                    data = data.decode(charset, "replace").encode("utf-8")
                except LookupError:
                    pass
                found.append(data)
    return found


def wants_invitation(delivered: Delivered) -> list[DeliveredTo]:
    """The patients of `delivered` whose agenda may receive an invitation from it: a
    professional's or an organisation's message that may hold a calendar part (by the leaf
    types the pipeline saw; encrypted: it may). Pure, on the accept path before the commit:
    most mail holds no calendar and writes no row."""
    if delivered.sender_kind not in INVITERS or not delivered.may_contain(*CALENDAR_TYPES):
        return []
    return delivered.patients


def _is_minor(born: date, today: date) -> bool:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day)) < 18


class Intake:
    def __init__(self, engine: AsyncEngine, cipher: BodyCipher) -> None:
        self.engine = engine
        self.cipher = cipher

    async def file(self, delivered: Delivered) -> None:
        """The post-delivery runner: read the stored message each patient recipient holds.
        Raises when it could not (the queue tries again); a refused invitation is an outcome."""
        for to in delivered.patients:
            outcome = await self.take(delivered, to)
            if outcome is not None and outcome.applied is None:
                log.info("invitation in message %d not taken: %s", to.message_id, outcome.reason)

    async def take(self, delivered: Delivered, to: DeliveredTo, now: datetime | None = None) -> Outcome | None:
        """Read one delivered message from the store; None when it holds no calendar (or is gone)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        async with self.engine.connect() as conn:
            sealed = (await conversations.sealed_bodies(conn, [to.message_id])).get(to.message_id)
            key = await conversations.conversation_of_message(conn, to.message_id)
            account = await patients.account_for_address(conn, to.address)
            chosen = await store.prefs(conn, account.id) if account else store.Prefs()
        if sealed is None or account is None:
            return None
        parts = calendar_parts(self.cipher.open(sealed))
        if not parts:
            return None
        try:
            # In a thread: a bounded parse (see `ical`) is still milliseconds of CPU per message.
            invitation = await asyncio.to_thread(ical.parse_invitation, parts[0], where=zone(chosen.timezone), now=now)
        except ical.InvalidCalendar as refused:
            return Outcome(None, refused.reason)
        if invitation.organizer != delivered.sender:
            return Outcome(None, "the organiser is not the sender")
        if to.address not in invitation.attendees:
            return Outcome(None, "the recipient is not an attendee")
        link = dict(message_id=to.message_id, message_id_header=delivered.message_id_header, conversation_key=key)
        async with self.engine.begin() as conn:
            if invitation.method == "CANCEL":
                return await _cancel(conn, account.id, invitation, chosen, now)
            secret = invitation.private and _is_minor(account.birth_date, now.date())
            return await _request(conn, account.id, to.address, invitation, secret, link, chosen, now)


def _newer(invitation: ical.Invitation, row: store.AppointmentRow) -> bool | None:
    """True: a later version; False: an older one; None: the same (RFC 5546 2.1.5)."""
    if invitation.sequence != row.sequence:
        return invitation.sequence > row.sequence
    if invitation.dtstamp is not None and row.dtstamp is not None and invitation.dtstamp != row.dtstamp:
        return invitation.dtstamp > row.dtstamp
    return None


async def _professional_name(conn: AsyncConnection, address: str) -> str:
    entry = (await patients.describe(conn, [address])).get(address)
    if entry is None:
        return address
    person = " ".join(part for part in (entry.civility, entry.first_name, entry.last_name) if part)
    return person or entry.display_name or entry.structure_name or address


async def _request(
    conn: AsyncConnection,
    patient_id: int,
    attendee: str,
    invitation: ical.Invitation,
    secret: bool,
    link: dict[str, object],
    chosen: store.Prefs,
    now: datetime,
) -> Outcome:
    existing = await store.of_uid(conn, patient_id, invitation.uid)
    if existing and any(row.organizer != invitation.organizer for row in existing):
        return Outcome(None, "this UID belongs to another organiser")
    if existing:
        newer = _newer(invitation, existing[0])
        if newer is False or newer is None:
            return Outcome("stale")
    by_occurrence = {row.recurrence_id: row for row in existing}
    name = await _professional_name(conn, invitation.organizer)
    values = dict(
        title=invitation.summary or "Rendez-vous",
        place=invitation.location,
        professional_address=invitation.organizer,
        professional_name=name[:200],
        source="invitation",
        secret=secret,
        uid=invitation.uid,
        sequence=invitation.sequence,
        dtstamp=invitation.dtstamp,
        organizer=invitation.organizer,
        attendee=attendee,
        **link,
    )
    kept = set()
    for occurrence in invitation.occurrences:
        row = by_occurrence.get(occurrence.recurrence_id)
        times = dict(starts_at=occurrence.starts_at, ends_at=occurrence.ends_at, all_day=occurrence.all_day)
        if row is None:
            appointment_id = await store.add(
                conn,
                patient_id=patient_id,
                status="needs-action",
                note="",
                created_by=name[:200],
                recurrence_id=occurrence.recurrence_id,
                **times,
                **values,
            )
        else:
            moved = row.starts_at != occurrence.starts_at or row.ends_at != occurrence.ends_at
            status = "needs-action" if moved or row.status == "cancelled" else row.status
            await store.change(conn, patient_id, row.id, status=status, **times, **values)
            appointment_id = row.id
        kept.add(occurrence.recurrence_id)
        fresh = await store.get(conn, patient_id, appointment_id, with_secret=True)
        assert fresh is not None
        await reminders.schedule_appointment(conn, fresh, chosen, now)
    gone = [row.id for row in existing if row.recurrence_id not in kept and row.starts_at > now]
    if gone:
        for row_id in gone:
            await store.change(conn, patient_id, row_id, status="cancelled", sequence=invitation.sequence)
        await reminders.cancel(conn, patient_id, gone)
    return Outcome("updated" if existing else "added")


async def _cancel(conn: AsyncConnection, patient_id: int, invitation: ical.Invitation, chosen: store.Prefs, now: datetime) -> Outcome:
    existing = await store.of_uid(conn, patient_id, invitation.uid)
    if not existing:
        return Outcome(None, "cancels nothing we hold")
    if any(row.organizer != invitation.organizer for row in existing):
        return Outcome(None, "this UID belongs to another organiser")
    if invitation.sequence < existing[0].sequence:
        return Outcome("stale")
    wanted = {occurrence.recurrence_id for occurrence in invitation.occurrences}
    targets = [row.id for row in existing if invitation.whole or row.recurrence_id in wanted]
    for row_id in targets:
        await store.change(conn, patient_id, row_id, status="cancelled", sequence=invitation.sequence)
    await reminders.cancel(conn, patient_id, targets)
    return Outcome("cancelled")
