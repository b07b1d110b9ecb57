"""What the agenda does, without HTTP: the pages call this, and it holds the access rules.

Who may see an agenda: the patient, and the guardian of a minor (a carer's delegation
covers messages, not the agenda). What a guardian does not see: a minor's secret items
(confidential care, CSP L1111-5). Answers to invitations go through the gateway's accept
pipeline as replies in the invitation's conversation, and the pipeline is asked first
(`judge`) so that the page never offers what the gateway would refuse, and says why.
"""

from __future__ import annotations

import logging
import secrets
import time as time_module
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee import db
from caducee.agenda import ical, reminders, replies, store
from caducee.agenda.due import DueItem, History, State, evaluate
from caducee.agenda.schedule import KINDS, Table, load_table
from caducee.agenda.store import AppointmentRow, Prefs
from caducee.agenda.times import french_clock, french_day, local, zone
from caducee.annuaire import patients
from caducee.annuaire import service as annuaire
from caducee.annuaire.patients import Profile
from caducee.config import Settings
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.policies import Message as MessageFacts

log = logging.getLogger(__name__)

UPCOMING_LIMIT = 50
SEX_SECONDS = 600.0
OVERVIEW_SECONDS = timedelta(seconds=60)
FEED_PAST = timedelta(days=90)
FEED_AHEAD = timedelta(days=2 * 366)
STATUS_WORDS = {
    "confirmed": "",
    "needs-action": "Invitation à confirmer",
    "accepted": "Vous avez accepté",
    "declined": "Vous avez refusé",
    "cancelled": "Annulé par le professionnel",
}
MAX_TITLE, MAX_PLACE, MAX_NOTE, MAX_NAME = 200, 300, 2000, 200


class Refused(ValueError):
    """An action the agenda does not do; the text is the French sentence for the page."""


def may_see(profile: Profile) -> bool:
    return profile.relation in ("self", "guardian")


def sees_secret(profile: Profile) -> bool:
    return profile.relation == "self"


@dataclass(frozen=True)
class AppointmentView:
    row: AppointmentRow
    starts: datetime  # in the patient's zone
    ends: datetime | None
    day_text: str
    time_text: str
    status_text: str
    past: bool

    @property
    def id(self) -> int:
        return self.row.id


@dataclass(frozen=True)
class ReplyOption:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class ItemView:
    item: DueItem
    kind_text: str
    when_text: str


@dataclass
class PreventionView:
    version: str
    source: str
    due: list[ItemView] = field(default_factory=list)
    overdue: list[ItemView] = field(default_factory=list)
    upcoming: list[ItemView] = field(default_factory=list)
    done: list[ItemView] = field(default_factory=list)
    not_applicable: list[ItemView] = field(default_factory=list)


@dataclass(frozen=True)
class Day:
    day: date
    in_month: bool
    today: bool
    appointments: list[AppointmentView]
    items: list[DueItem]


@dataclass(frozen=True)
class Draft:
    """What the patient typed in the appointment form (checked by `check_draft`)."""

    day: str = ""
    clock: str = ""
    duration: str = "30"
    title: str = ""
    place: str = ""
    professional: str = ""  # an annuaire address chosen in the search
    professional_name: str = ""  # or a name typed
    note: str = ""
    secret: bool = False


def _clean(text: str, limit: int) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(ch for ch in text if ch in "\n\t" or ch >= " ").strip()[:limit]


class Agenda:
    def __init__(self, engine: AsyncEngine, settings: Settings, pipeline: AcceptPipeline | None) -> None:
        self.engine = engine
        self.reads = db.autocommit_reads(engine)
        self.settings = settings
        self.pipeline = pipeline
        self._sexes: dict[int, tuple[float, str]] = {}
        self._overviews: dict[tuple[int, bool], tuple[tuple[object, ...], datetime, Any]] = {}

    @property
    def table(self) -> Table:
        return load_table(self.settings.agenda_prevention_table or None)

    async def prefs(self, profile: Profile) -> Prefs:
        async with self.reads.connect() as conn:
            return await store.prefs(conn, profile.account.id)

    def view(self, row: AppointmentRow, prefs: Prefs, now: datetime) -> AppointmentView:
        where = zone(prefs.timezone)
        starts = local(row.starts_at, where)
        ends = local(row.ends_at, where) if row.ends_at else None
        time_text = (
            "toute la journée"
            if row.all_day
            else french_clock(starts) + (f" à {french_clock(ends)}" if ends and ends.date() == starts.date() else "")
        )
        return AppointmentView(
            row, starts, ends, french_day(starts.date()), time_text, STATUS_WORDS.get(row.status, ""), (row.ends_at or row.starts_at) < now
        )

    # ---- the first page ------------------------------------------------------------------------

    async def overview(self, profile: Profile, now: datetime | None = None) -> tuple[list[AppointmentView], PreventionView]:
        """The upcoming list and the prevention calendar: the agenda's first page, its busiest.

        Answered from a per-process cache checked on every request against the agenda's
        version (one statement), as the webmail's conversation list is: never stale, and a
        page that did not change costs one database round trip. An entry also ends when its
        first appointment leaves the list (two hours after it started) or after a minute.
        """
        now = (now or datetime.now(UTC)).astimezone(UTC)
        key = (profile.account.id, sees_secret(profile))
        async with self.reads.connect() as conn:
            current = await store.version(conn, profile.account.id)
            cached = self._overviews.get(key)
            if cached is not None and cached[0] == current and now < cached[1]:
                chosen, marks, rows, sex = cached[2]
            else:
                chosen, marks = await store.prefs_and_marks(conn, profile.account.id)
                rows = await store.upcoming(conn, profile.account.id, now - timedelta(hours=2), with_secret=key[1], limit=UPCOMING_LIMIT)
                sex = await self._sex(conn, profile.account.id)
                until = min([now + OVERVIEW_SECONDS, *([rows[0].starts_at + timedelta(hours=2)] if rows else [])])
                if len(self._overviews) > 10_000:
                    self._overviews.clear()
                self._overviews[key] = (current, until, (chosen, marks, rows, sex))
        today = local(now, zone(chosen.timezone)).date()
        items = evaluate(self.table, profile.account.birth_date, sex, History.of(marks), today) if sex is not None else []
        return [self.view(row, chosen, now) for row in rows], self._grouped(items, today)

    async def _sex(self, conn: AsyncConnection, patient_id: int) -> str | None:
        """A patient's INS sex, kept per process for `SEX_SECONDS` (the birth date comes with
        the profile; the sex changes only by an INSi correction)."""
        moment = time_module.monotonic()
        cached = self._sexes.get(patient_id)
        if cached is not None and moment - cached[0] < SEX_SECONDS:
            return cached[1]
        person = await patients.demographics_of(conn, patient_id)
        if person is None:
            return None
        if len(self._sexes) > 100_000:
            self._sexes.clear()
        self._sexes[patient_id] = (moment, person.sex)
        return person.sex

    # ---- appointments ------------------------------------------------------------------------

    async def upcoming(self, profile: Profile, now: datetime | None = None) -> list[AppointmentView]:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        async with self.reads.connect() as conn:
            chosen = await store.prefs(conn, profile.account.id)
            rows = await store.upcoming(
                conn, profile.account.id, now - timedelta(hours=2), with_secret=sees_secret(profile), limit=UPCOMING_LIMIT
            )
        return [self.view(row, chosen, now) for row in rows]

    async def month(self, profile: Profile, year: int, month: int, now: datetime | None = None) -> list[list[Day]]:
        """The weeks (Monday first) of a month, with each day's appointments and items falling due."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        first = date(year, month, 1)
        start = first - timedelta(days=first.weekday())
        following = date(year + (month == 12), month % 12 + 1, 1)
        end = following + timedelta(days=(7 - following.weekday()) % 7)
        async with self.reads.connect() as conn:
            chosen = await store.prefs(conn, profile.account.id)
            where = zone(chosen.timezone)
            rows = await store.between(
                conn,
                profile.account.id,
                datetime.combine(start, time(0), tzinfo=where).astimezone(UTC),
                datetime.combine(end, time(0), tzinfo=where).astimezone(UTC),
                with_secret=sees_secret(profile),
            )
        items = await self.prevention_items(profile, local(now, where).date())
        today = local(now, where).date()
        by_day: dict[date, list[AppointmentView]] = {}
        for row in rows:
            view = self.view(row, chosen, now)
            by_day.setdefault(view.starts.date(), []).append(view)
        falling: dict[date, list[DueItem]] = {}
        for item in items:
            if item.due_from is not None and item.state in (State.UPCOMING, State.DUE):
                falling.setdefault(item.due_from, []).append(item)
        weeks = []
        day = start
        while day < end:
            weeks.append(
                [
                    Day(d, d.month == month, d == today, by_day.get(d, []), falling.get(d, []))
                    for d in (day + timedelta(days=i) for i in range(7))
                ]
            )
            day += timedelta(days=7)
        return weeks

    async def appointment(self, profile: Profile, appointment_id: int, now: datetime | None = None) -> AppointmentView | None:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        async with self.reads.connect() as conn:
            chosen = await store.prefs(conn, profile.account.id)
            row = await store.get(conn, profile.account.id, appointment_id, with_secret=sees_secret(profile))
        return self.view(row, chosen, now) if row else None

    def check_draft(self, draft: Draft, prefs: Prefs, now: datetime) -> dict[str, object]:
        """The columns of an appointment the patient typed, or Refused with the sentence to show."""
        try:
            day = date.fromisoformat(draft.day.strip())
        except ValueError:
            raise Refused("Indiquez la date du rendez-vous (jour, mois, année).") from None
        if not (now.date() - timedelta(days=366) <= day <= now.date() + ical.LATEST):
            raise Refused("Cette date est trop loin : indiquez une date dans les cinq ans à venir.")
        all_day = not draft.clock.strip()
        where = zone(prefs.timezone)
        if all_day:
            starts = datetime.combine(day, time(0), tzinfo=where).astimezone(UTC)
            ends = None
        else:
            try:
                clock = time.fromisoformat(draft.clock.strip())
            except ValueError:
                raise Refused("Indiquez l'heure sous la forme 14:30, ou laissez-la vide pour toute la journée.") from None
            starts = datetime.combine(day, clock, tzinfo=where).astimezone(UTC)
            try:
                minutes = int(draft.duration or "30")
            except ValueError:
                minutes = 30
            ends = starts + timedelta(minutes=max(5, min(minutes, 12 * 60)))
        title = _clean(draft.title, MAX_TITLE)
        if not title:
            raise Refused("Donnez un nom à ce rendez-vous (par exemple « Dentiste »).")
        return dict(
            starts_at=starts,
            ends_at=ends,
            all_day=all_day,
            title=title,
            place=_clean(draft.place, MAX_PLACE),
            note=_clean(draft.note, MAX_NOTE),
            professional_address=draft.professional or None,
            professional_name=_clean(draft.professional_name, MAX_NAME),
        )

    async def professional(self, address: str) -> annuaire.MailboxEntry | None:
        """A published professional or structure mailbox of the annuaire (not a patient's)."""
        if not address:
            return None
        async with self.reads.connect() as conn:
            entry = await annuaire.get_mailbox(conn, address[:254])
        return entry if entry is not None and entry.type != "PAT" else None

    async def professionals(self, name: str, place: str) -> annuaire.SearchPage:
        async with self.reads.connect() as conn:
            return await annuaire.search(conn, name=name or None, place=place or None, page=1, per_page=10)

    async def _named(self, draft: Draft) -> Draft:
        entry = await self.professional(draft.professional)
        if entry is None:
            return Draft(**{**draft.__dict__, "professional": ""})
        person = " ".join(part for part in (entry.civility, entry.first_name, entry.last_name) if part)
        return Draft(**{**draft.__dict__, "professional_name": person or entry.display_name or entry.structure_name})

    async def add(self, profile: Profile, actor_name: str, draft: Draft, now: datetime | None = None) -> int:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        draft = await self._named(draft)
        chosen = await self.prefs(profile)
        values = self.check_draft(draft, chosen, now)
        secret = bool(draft.secret) and sees_secret(profile) and _minor(profile.account.birth_date, now.date())
        async with self.engine.begin() as conn:
            appointment_id = await store.add(
                conn,
                patient_id=profile.account.id,
                source="patient",
                status="confirmed",
                secret=secret,
                created_by=actor_name[:200],
                recurrence_id="",
                sequence=0,
                **values,
            )
            row = await store.get(conn, profile.account.id, appointment_id, with_secret=True)
            assert row is not None
            await reminders.schedule_appointment(conn, row, chosen, now)
        return appointment_id

    async def edit(self, profile: Profile, appointment_id: int, draft: Draft, now: datetime | None = None) -> None:
        now = (now or datetime.now(UTC)).astimezone(UTC)
        draft = await self._named(draft)
        chosen = await self.prefs(profile)
        async with self.engine.begin() as conn:
            row = await store.get(conn, profile.account.id, appointment_id, with_secret=sees_secret(profile))
            if row is None:
                raise Refused("Ce rendez-vous n'existe pas.")
            if row.from_invitation:
                raise Refused(
                    "Ce rendez-vous vient d'une invitation : seul le professionnel peut le modifier. Vous pouvez l'accepter ou le refuser."
                )
            values = self.check_draft(draft, chosen, now)
            if sees_secret(profile) and _minor(profile.account.birth_date, now.date()):
                values["secret"] = bool(draft.secret)
            await store.change(conn, profile.account.id, appointment_id, **values)
            fresh = await store.get(conn, profile.account.id, appointment_id, with_secret=True)
            assert fresh is not None
            await reminders.schedule_appointment(conn, fresh, chosen, now)

    async def delete(self, profile: Profile, appointment_id: int) -> None:
        """A patient's own appointment goes; an invitation's occurrence goes too (the
        professional is not told: declining is how to tell them)."""
        async with self.engine.begin() as conn:
            row = await store.get(conn, profile.account.id, appointment_id, with_secret=sees_secret(profile))
            if row is None:
                raise Refused("Ce rendez-vous n'existe pas.")
            await reminders.cancel(conn, profile.account.id, [appointment_id])
            await store.remove(conn, profile.account.id, [appointment_id])

    # ---- answering an invitation ---------------------------------------------------------------

    async def reply_option(self, profile: Profile, view: AppointmentView) -> ReplyOption:
        row = view.row
        if not row.from_invitation:
            return ReplyOption(False)
        if row.status == "cancelled":
            return ReplyOption(False, "Le professionnel a annulé ce rendez-vous : il n'y a rien à répondre.")
        if view.past:
            return ReplyOption(False, "Ce rendez-vous est passé.")
        if not profile.may_reply:
            return ReplyOption(False, "Vous ne pouvez pas répondre au nom de ce patient.")
        if self.pipeline is None or not row.organizer or not row.message_id_header:
            return ReplyOption(False, "Les réponses sont momentanément indisponibles. Réessayez plus tard.")
        verdict = await self.pipeline.judge(
            profile.account.address,
            [row.organizer],
            references=[row.message_id_header],
            message=MessageFacts(size=0, subject="Re:", has_content=True),
            channel=Channel.WEBMAIL,
        )
        decision = verdict.decisions[row.organizer]
        if not decision.accepted:
            text = decision.text_fr.strip()
            return ReplyOption(
                False, f"Vous ne pouvez pas répondre à cette invitation : {text[:1].lower() + text[1:]}{'' if text.endswith('.') else '.'}"
            )
        return ReplyOption(True)

    async def respond(self, profile: Profile, actor_name: str, appointment_id: int, accepted: bool, now: datetime | None = None) -> str:
        """Send the METHOD:REPLY and record the answer; the sentence for the page, or Refused."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        view = await self.appointment(profile, appointment_id, now)
        if view is None:
            raise Refused("Ce rendez-vous n'existe pas.")
        option = await self.reply_option(profile, view)
        if not option.allowed:
            raise Refused(option.reason or "Ce rendez-vous n'attend pas de réponse.")
        row = view.row
        assert self.pipeline is not None and row.organizer and row.message_id_header and row.uid
        raw = replies.answer(
            patient_name=profile.account.name,
            patient=profile.account.address,
            organizer_name=row.professional_name,
            organizer=row.organizer,
            uid=row.uid,
            sequence=row.sequence,
            summary=row.title,
            starts_at=row.starts_at,
            when_text=f"{view.day_text}, {view.time_text}",
            accepted=accepted,
            in_reply_to=row.message_id_header,
            hostname=self.settings.hostname,
            now=now,
        )
        result = await self.pipeline.accept(
            Envelope(profile.account.address, [row.organizer], raw, Channel.WEBMAIL, authenticated=profile.account.address, keep_sent=True)
        )
        if not result.accepted:
            decision = next(iter(result.refused.values()), None)
            why = decision.text_fr.strip() if decision is not None else "le message n'a pas pu être envoyé"
            raise Refused(f"Votre réponse n'a pas été envoyée : {why[:1].lower() + why[1:]}{'' if why.endswith('.') else '.'}")
        chosen = await self.prefs(profile)
        async with self.engine.begin() as conn:
            for same in await store.of_uid(conn, profile.account.id, row.uid):
                if same.status == "cancelled":
                    continue
                await store.change(conn, profile.account.id, same.id, status="accepted" if accepted else "declined")
                fresh = await store.get(conn, profile.account.id, same.id, with_secret=True)
                assert fresh is not None
                await reminders.schedule_appointment(conn, fresh, chosen, now)
        _ = actor_name
        return f"Votre réponse a été envoyée à {row.professional_name} : vous avez {'accepté' if accepted else 'refusé'} ce rendez-vous."

    # ---- prevention ----------------------------------------------------------------------------

    async def prevention_items(self, profile: Profile, today: date) -> list[DueItem]:
        async with self.reads.connect() as conn:
            person = await patients.demographics_of(conn, profile.account.id)
            history = History.of(await store.marks(conn, profile.account.id))
        if person is None:
            return []
        return evaluate(self.table, person.birth_date, person.sex, history, today)

    async def prevention(self, profile: Profile, today: date) -> PreventionView:
        return self._grouped(await self.prevention_items(profile, today), today)

    def _grouped(self, items: list[DueItem], today: date, horizon: timedelta = timedelta(days=366)) -> PreventionView:
        table = self.table
        view = PreventionView(table.version, table.name)
        for item in items:
            shown = ItemView(item, KINDS[item.rule.kind], _when(item))
            if item.state is State.DUE:
                view.due.append(shown)
            elif item.state is State.OVERDUE:
                view.overdue.append(shown)
            elif item.state is State.UPCOMING and item.due_from is not None and item.due_from <= today + horizon:
                view.upcoming.append(shown)
            elif item.state is State.DONE or (item.state is State.UPCOMING and item.last_done is not None):
                view.done.append(shown)
            elif item.state is State.NOT_APPLICABLE:
                view.not_applicable.append(shown)
        view.upcoming.sort(key=lambda shown: shown.item.due_from or today)
        return view

    async def mark(self, profile: Profile, actor_name: str, key: str, *, done_on: date | None, not_applicable: bool, today: date) -> None:
        if self.table.rule(key) is None:
            raise Refused("Cet examen ou ce vaccin n'est pas dans le calendrier.")
        if not not_applicable:
            if done_on is None:
                raise Refused("Indiquez la date à laquelle c'était fait.")
            if done_on > today:
                raise Refused("Cette date est dans l'avenir : indiquez le jour où c'était fait.")
            if done_on < profile.account.birth_date:
                raise Refused("Cette date est avant la naissance : vérifiez l'année.")
        async with self.engine.begin() as conn:
            await store.mark(conn, profile.account.id, key, None if not_applicable else done_on, actor_name)

    async def unmark(self, profile: Profile, key: str) -> None:
        async with self.engine.begin() as conn:
            await store.unmark(conn, profile.account.id, key)

    # ---- preferences and the feed -------------------------------------------------------------

    async def save_prefs(self, profile: Profile, chosen: Prefs, now: datetime | None = None) -> None:
        """New reminder choices; the reminders of coming appointments follow them."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        async with self.engine.begin() as conn:
            await store.save_prefs(conn, profile.account.id, chosen)
            for row in await store.upcoming(conn, profile.account.id, now, with_secret=True, limit=1000):
                await reminders.schedule_appointment(conn, row, chosen, now)

    async def feed_since(self, profile: Profile, actor_id: int) -> datetime | None:
        async with self.reads.connect() as conn:
            return await store.active_token_since(conn, profile.account.id, actor_id)

    async def new_feed(self, profile: Profile, actor_id: int) -> str:
        """A new private feed token for this person on this profile (their earlier one stops
        working, another person's does not); shown once, kept hashed."""
        token = secrets.token_urlsafe(32)
        async with self.engine.begin() as conn:
            await store.revoke_tokens(conn, profile.account.id, actor_id)
            await store.add_token(conn, profile.account.id, token, created_by=actor_id, shows_secret=sees_secret(profile))
        return token

    async def revoke_feed(self, profile: Profile, actor_id: int) -> None:
        async with self.engine.begin() as conn:
            await store.revoke_tokens(conn, profile.account.id, actor_id)

    async def feed(self, token: str, now: datetime | None = None) -> bytes | None:
        """The iCalendar feed of a live token, else None (unknown, revoked, malformed)."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        if not token or len(token) > 100:
            return None
        async with self.reads.connect() as conn:
            owner = await store.token_owner(conn, token)
            if owner is None:
                return None
            patient_id, maker, with_secret = owner
            # The token is a standing authorisation: it holds only while the person who made
            # it may still see this agenda (a guardianship ends, a child comes of age, a
            # carer's delegation is withdrawn: the feed stops with it).
            grounds = next((p for p in await patients.profiles_for(conn, maker) if p.account.id == patient_id), None)
            if grounds is None or grounds.account.status != "activated":
                return None
            with_secret = with_secret and sees_secret(grounds)
            chosen = await store.prefs(conn, patient_id)
            rows = await store.between(conn, patient_id, now - FEED_PAST, now + FEED_AHEAD, with_secret=with_secret)
            person = await patients.demographics_of(conn, patient_id)
            history = History.of(await store.marks(conn, patient_id))
        entries = [self._entry(row, chosen) for row in rows]
        if person is not None:
            today = local(now, zone(chosen.timezone)).date()
            for item in evaluate(self.table, person.birth_date, person.sex, history, today):
                if (
                    item.due_from is not None
                    and item.state in (State.UPCOMING, State.DUE, State.OVERDUE)
                    and item.due_from <= today + FEED_AHEAD
                ):
                    entries.append(
                        ical.Entry(
                            uid=f"{patient_id}-{item.key}-{item.due_from:%Y%m%d}.prevention@{self.settings.hostname}",
                            starts_at=now,
                            ends_at=None,
                            all_day=True,
                            day=item.due_from,
                            summary=f"À prévoir : {item.rule.label}",
                            description=item.rule.detail,
                            transparent=True,
                        )
                    )
        return ical.document(entries, name=f"Agenda santé de {grounds.account.name}", now=now)

    def _entry(self, row: AppointmentRow, chosen: Prefs) -> ical.Entry:
        where = zone(chosen.timezone)
        status = {"cancelled": "CANCELLED", "declined": "CANCELLED", "needs-action": "TENTATIVE"}.get(row.status, "CONFIRMED")
        description = "\n".join(
            part
            for part in (
                f"Avec {row.professional_name}" if row.professional_name else "",
                "Invitation reçue sur votre messagerie santé." if row.from_invitation else "",
                row.note,
            )
            if part
        )
        return ical.Entry(
            uid=f"{row.id}.rendez-vous@{self.settings.hostname}",
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            all_day=row.all_day,
            day=local(row.starts_at, where).date() if row.all_day else None,
            summary=row.title or "Rendez-vous",
            location=row.place,
            description=description,
            status=status,
        )

    async def download(self, profile: Profile, appointment_id: int, now: datetime | None = None) -> bytes | None:
        """One appointment as a `.ics` file (METHOD:PUBLISH) for the patient's own calendar."""
        now = (now or datetime.now(UTC)).astimezone(UTC)
        async with self.reads.connect() as conn:
            chosen = await store.prefs(conn, profile.account.id)
            row = await store.get(conn, profile.account.id, appointment_id, with_secret=sees_secret(profile))
        if row is None:
            return None
        return ical.document([self._entry(row, chosen)], name=None, now=now, method="PUBLISH")


def _minor(born: date, today: date) -> bool:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day)) < 18


def _when(item: DueItem) -> str:
    def day(value: date | None) -> str:
        return french_day(value) if value else ""

    if item.state is State.DUE:
        return f"À faire avant le {day(item.due_until)}" if item.due_until else "À faire dès maintenant"
    if item.state is State.OVERDUE:
        return f"En retard depuis le {day(item.due_until)}"
    if item.state is State.UPCOMING:
        return f"À partir du {day(item.due_from)}" + (f" (fait le {day(item.last_done)})" if item.last_done else "")
    if item.state is State.DONE:
        return f"Fait le {day(item.last_done)}" if item.last_done else "Fait"
    return "Ne vous concerne pas"
