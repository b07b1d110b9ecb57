"""Reading and writing the agenda's tables, each function inside the caller's connection.

Every function takes the patient whose agenda it is and never returns another's rows: an
appointment id of someone else's agenda is simply not found.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import BigInteger, bindparam, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.agenda.models import Appointment, FeedToken, Preferences, PreventionMark
from caducee.agenda.times import DEFAULT_ZONE, aware

LEADS = {0: "le jour même", 1: "la veille", 2: "deux jours avant", 7: "une semaine avant"}
LIVE = ("confirmed", "needs-action", "accepted")  # statuses that are appointments to go to


@dataclass(frozen=True)
class Prefs:
    reminders: bool = True
    lead_days: int = 1
    hour: int = 9
    timezone: str = DEFAULT_ZONE


@dataclass(frozen=True)
class AppointmentRow:
    id: int
    patient_id: int
    starts_at: datetime
    ends_at: datetime | None
    all_day: bool
    title: str
    place: str
    professional_address: str | None
    professional_name: str
    note: str
    source: str
    status: str
    secret: bool
    uid: str | None
    recurrence_id: str
    sequence: int
    dtstamp: datetime | None
    organizer: str | None
    attendee: str | None
    message_id: int | None
    message_id_header: str | None
    conversation_key: int | None

    @property
    def from_invitation(self) -> bool:
        return self.source == "invitation"

    @property
    def live(self) -> bool:
        return self.status in LIVE


def _row(row) -> AppointmentRow:  # type: ignore[no-untyped-def]
    return AppointmentRow(
        row.id,
        row.patient_id,
        aware(row.starts_at),
        aware(row.ends_at) if row.ends_at else None,
        bool(row.all_day),
        row.title,
        row.place,
        row.professional_address,
        row.professional_name,
        row.note,
        row.source,
        row.status,
        bool(row.secret),
        row.uid,
        row.recurrence_id,
        row.sequence,
        aware(row.dtstamp) if row.dtstamp else None,
        row.organizer,
        row.attendee,
        row.message_id,
        row.message_id_header,
        row.conversation_key,
    )


def _visible(patient_id: int, with_secret: bool):  # type: ignore[no-untyped-def]
    condition = Appointment.patient_id == patient_id
    return condition if with_secret else condition & (Appointment.secret.is_(False))


async def between(conn: AsyncConnection, patient_id: int, start: datetime, end: datetime, *, with_secret: bool) -> list[AppointmentRow]:
    rows = await conn.execute(
        select(Appointment)
        .where(_visible(patient_id, with_secret), Appointment.starts_at >= start, Appointment.starts_at < end)
        .order_by(Appointment.starts_at, Appointment.id)
    )
    return [_row(row) for row in rows]


async def upcoming(conn: AsyncConnection, patient_id: int, since: datetime, *, with_secret: bool, limit: int) -> list[AppointmentRow]:
    rows = await conn.execute(
        select(Appointment)
        .where(_visible(patient_id, with_secret), Appointment.starts_at >= since)
        .order_by(Appointment.starts_at, Appointment.id)
        .limit(limit)
    )
    return [_row(row) for row in rows]


async def get(conn: AsyncConnection, patient_id: int, appointment_id: int, *, with_secret: bool) -> AppointmentRow | None:
    row = (await conn.execute(select(Appointment).where(_visible(patient_id, with_secret), Appointment.id == appointment_id))).first()
    return _row(row) if row else None


async def by_ids(conn: AsyncConnection, ids: list[int]) -> dict[int, AppointmentRow]:
    if not ids:
        return {}
    return {row.id: _row(row) for row in await conn.execute(select(Appointment).where(Appointment.id.in_(ids)))}


async def of_uid(conn: AsyncConnection, patient_id: int, uid: str) -> list[AppointmentRow]:
    rows = await conn.execute(
        select(Appointment).where(Appointment.patient_id == patient_id, Appointment.uid == uid).order_by(Appointment.starts_at)
    )
    return [_row(row) for row in rows]


async def add(conn: AsyncConnection, **values: object) -> int:
    now = datetime.now(UTC)
    values.setdefault("created_at", now)
    values.setdefault("updated_at", now)
    result = await conn.execute(insert(Appointment).values(**values).returning(Appointment.id))
    return int(result.scalar_one())


async def change(conn: AsyncConnection, patient_id: int, appointment_id: int, **values: object) -> None:
    values["updated_at"] = datetime.now(UTC)
    await conn.execute(update(Appointment).where(Appointment.patient_id == patient_id, Appointment.id == appointment_id).values(**values))


async def remove(conn: AsyncConnection, patient_id: int, appointment_ids: list[int]) -> None:
    await conn.execute(delete(Appointment).where(Appointment.patient_id == patient_id, Appointment.id.in_(appointment_ids)))


# ---- prevention marks ------------------------------------------------------------------------


async def marks(conn: AsyncConnection, patient_id: int) -> list[tuple[str, date | None]]:
    rows = await conn.execute(
        select(PreventionMark.item_key, PreventionMark.done_on).where(PreventionMark.patient_id == patient_id).order_by(PreventionMark.id)
    )
    return [(row.item_key, row.done_on) for row in rows]


async def marks_in_range(conn: AsyncConnection, first_id: int, last_id: int) -> dict[int, list[tuple[str, date | None]]]:
    """Every mark of the patients `first_id <= id < last_id` (the daily job's batch)."""
    found: dict[int, list[tuple[str, date | None]]] = {}
    rows = await conn.execute(
        select(PreventionMark.patient_id, PreventionMark.item_key, PreventionMark.done_on).where(
            PreventionMark.patient_id >= first_id, PreventionMark.patient_id < last_id
        )
    )
    for patient_id, key, done_on in rows:
        found.setdefault(patient_id, []).append((key, done_on))
    return found


async def marks_on(conn: AsyncConnection, first_id: int, last_id: int, days: Collection[date]) -> list[tuple[int, str, date]]:
    """The marks of patients `first_id <= id < last_id` done on one of `days`."""
    if not days:
        return []
    rows = await conn.execute(
        select(PreventionMark.patient_id, PreventionMark.item_key, PreventionMark.done_on).where(
            PreventionMark.patient_id >= first_id, PreventionMark.patient_id < last_id, PreventionMark.done_on.in_(sorted(days))
        )
    )
    return [(row.patient_id, row.item_key, row.done_on) for row in rows]


async def marks_of(conn: AsyncConnection, patient_ids: Collection[int]) -> dict[int, list[tuple[str, date | None]]]:
    found: dict[int, list[tuple[str, date | None]]] = {}
    if not patient_ids:
        return found
    rows = await conn.execute(
        select(PreventionMark.patient_id, PreventionMark.item_key, PreventionMark.done_on)
        .where(PreventionMark.patient_id.in_(sorted(patient_ids)))
        .order_by(PreventionMark.id)
    )
    for patient_id, key, done_on in rows:
        found.setdefault(patient_id, []).append((key, done_on))
    return found


async def mark(conn: AsyncConnection, patient_id: int, key: str, done_on: date | None, by: str) -> None:
    """Done on a date (kept beside earlier ones: a recurring item's history), or not
    applicable (replacing any earlier "not applicable")."""
    if done_on is None:
        await conn.execute(delete(PreventionMark).where(PreventionMark.patient_id == patient_id, PreventionMark.item_key == key))
    await conn.execute(
        insert(PreventionMark).values(
            patient_id=patient_id, item_key=key, done_on=done_on, marked_by=by[:200], created_at=datetime.now(UTC)
        )
    )


async def unmark(conn: AsyncConnection, patient_id: int, key: str) -> None:
    """Forget the latest mark of an item (undo)."""
    latest = (
        await conn.execute(
            select(PreventionMark.id)
            .where(PreventionMark.patient_id == patient_id, PreventionMark.item_key == key)
            .order_by(PreventionMark.id.desc())
            .limit(1)
        )
    ).scalar()
    if latest is not None:
        await conn.execute(delete(PreventionMark).where(PreventionMark.id == latest))


# ---- preferences -----------------------------------------------------------------------------


async def version(conn: AsyncConnection, patient_id: int) -> tuple[object, ...]:
    """What changes whenever anything of one agenda changes (an appointment added, changed
    or removed, a mark, the preferences), in one statement of index look-ups: the first
    page checks its cached answer against it."""
    row = (await conn.execute(_VERSION, {"patient": patient_id})).one()
    return tuple(row)


def _version_statement():  # type: ignore[no-untyped-def]
    """Built once: the first page runs it on every request, and building the expression
    each time was a tenth of that page's time."""
    patient = bindparam("patient", type_=BigInteger())
    mine = Appointment.patient_id == patient
    marked = PreventionMark.patient_id == patient
    return select(
        select(func.count()).select_from(Appointment).where(mine).scalar_subquery(),
        select(func.max(Appointment.updated_at)).where(mine).scalar_subquery(),
        select(func.count()).select_from(PreventionMark).where(marked).scalar_subquery(),
        select(func.max(PreventionMark.id)).where(marked).scalar_subquery(),
        select(Preferences.updated_at).where(Preferences.patient_id == patient).scalar_subquery(),
    )


_VERSION = _version_statement()


async def prefs_and_marks(conn: AsyncConnection, patient_id: int) -> tuple[Prefs, list[tuple[str, date | None]]]:
    """A patient's preferences and marks in one statement (the agenda's first page)."""
    me = select(literal(patient_id).label("id")).subquery()
    rows = (
        await conn.execute(
            select(
                Preferences.reminders,
                Preferences.lead_days,
                Preferences.hour,
                Preferences.timezone,
                PreventionMark.item_key,
                PreventionMark.done_on,
            )
            .select_from(me)
            .outerjoin(Preferences, Preferences.patient_id == me.c.id)
            .outerjoin(PreventionMark, PreventionMark.patient_id == me.c.id)
            .order_by(PreventionMark.id)
        )
    ).all()
    first = rows[0] if rows else None
    chosen = (
        Prefs(bool(first.reminders), first.lead_days, first.hour, first.timezone)
        if first is not None and first.lead_days is not None
        else Prefs()
    )
    return chosen, [(row.item_key, row.done_on) for row in rows if row.item_key is not None]


async def prefs(conn: AsyncConnection, patient_id: int) -> Prefs:
    row = (await conn.execute(select(Preferences).where(Preferences.patient_id == patient_id))).first()
    return Prefs(bool(row.reminders), row.lead_days, row.hour, row.timezone) if row else Prefs()


async def prefs_in_range(conn: AsyncConnection, first_id: int, last_id: int) -> dict[int, Prefs]:
    rows = await conn.execute(select(Preferences).where(Preferences.patient_id >= first_id, Preferences.patient_id < last_id))
    return {row.patient_id: Prefs(bool(row.reminders), row.lead_days, row.hour, row.timezone) for row in rows}


async def prefs_of(conn: AsyncConnection, patient_ids: list[int]) -> dict[int, Prefs]:
    if not patient_ids:
        return {}
    rows = await conn.execute(select(Preferences).where(Preferences.patient_id.in_(sorted(set(patient_ids)))))
    found = {row.patient_id: Prefs(bool(row.reminders), row.lead_days, row.hour, row.timezone) for row in rows}
    return {patient_id: found.get(patient_id, Prefs()) for patient_id in patient_ids}


async def save_prefs(conn: AsyncConnection, patient_id: int, chosen: Prefs) -> None:
    values = dict(
        reminders=chosen.reminders, lead_days=chosen.lead_days, hour=chosen.hour, timezone=chosen.timezone, updated_at=datetime.now(UTC)
    )
    changed = await conn.execute(update(Preferences).where(Preferences.patient_id == patient_id).values(**values))
    if not changed.rowcount:
        await conn.execute(insert(Preferences).values(patient_id=patient_id, **values))


# ---- feed tokens -----------------------------------------------------------------------------


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


async def active_token_since(conn: AsyncConnection, patient_id: int, created_by: int) -> datetime | None:
    row = (
        await conn.execute(
            select(FeedToken.created_at)
            .where(FeedToken.patient_id == patient_id, FeedToken.created_by == created_by, FeedToken.revoked_at.is_(None))
            .order_by(FeedToken.id.desc())
        )
    ).first()
    return aware(row.created_at) if row else None


async def revoke_tokens(conn: AsyncConnection, patient_id: int, created_by: int | None = None) -> None:
    """Revoke the live tokens of a patient's agenda: those one person made (a guardian
    renewing theirs leaves the teenager's own alone), or all of them (None)."""
    query = update(FeedToken).where(FeedToken.patient_id == patient_id, FeedToken.revoked_at.is_(None))
    if created_by is not None:
        query = query.where(FeedToken.created_by == created_by)
    await conn.execute(query.values(revoked_at=datetime.now(UTC)))


async def add_token(conn: AsyncConnection, patient_id: int, token: str, *, created_by: int, shows_secret: bool) -> None:
    await conn.execute(
        insert(FeedToken).values(
            patient_id=patient_id,
            token_hash=token_hash(token),
            created_by=created_by,
            shows_secret=shows_secret,
            created_at=datetime.now(UTC),
        )
    )


async def token_owner(conn: AsyncConnection, token: str) -> tuple[int, int, bool] | None:
    """(patient id, who made it, whether the feed shows secret items) of a live token, else None."""
    row = (
        await conn.execute(
            select(FeedToken.patient_id, FeedToken.created_by, FeedToken.shows_secret).where(
                FeedToken.token_hash == token_hash(token), FeedToken.revoked_at.is_(None)
            )
        )
    ).first()
    return (row.patient_id, row.created_by, bool(row.shows_secret)) if row else None
