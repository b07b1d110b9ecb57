"""Reminders: the queue claimed with a lease, sent through the notifier exactly once across
processes and restarts, at the time the patient chose, with no medical detail; none for
closed or opted-out profiles, none for a minor's secret items; the daily job queues the
prevention items falling due."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agenda_helpers import AgendaSite, ics, site  # noqa: F401 - the fixture
from sqlalchemy import func, select

from caducee.agenda import store
from caducee.agenda.daily import DailyJob
from caducee.agenda.models import Reminder
from caducee.agenda.reminders import LEASE, ReminderWorker
from caducee.agenda.schedule import load_table
from caducee.agenda.service import Agenda, Draft
from caducee.annuaire import patients
from caducee.annuaire.patients import Profile
from caducee.notify.notifier import OutboxNotifier

PARIS = ZoneInfo("Europe/Paris")


def mails(outbox: Path, subject_starts: str = "Rappel") -> list[email.message.EmailMessage]:
    found = []
    for path in sorted(outbox.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if str(message["Subject"]).startswith(subject_starts):
            found.append(message)
    return found


async def profile(running: AgendaSite, key: str, relation: str = "self") -> Profile:
    async with running.gateway.engine.connect() as conn:
        account = await patients.account_for_address(conn, running.patient(key)["address"])
    assert account is not None
    return Profile(account, relation, True)


def worker(running: AgendaSite, outbox: Path) -> ReminderWorker:
    return ReminderWorker(
        running.gateway.engine, OutboxNotifier(outbox, "Caducée <n@demo.mssante.fr>"), load_table(), webmail_url="https://caducee.example/"
    )


def the_day_before(days: int) -> datetime:
    """Just after the default reminder time (9 h, Paris) on the eve of the day `days` ahead:
    a moment fixed by the calendar, not by the hour the suite happens to run at."""
    eve = (datetime.now(PARIS) + timedelta(days=days - 1)).date()
    return datetime.combine(eve, time(9, 1), tzinfo=PARIS)


def in_days(days: int, hour: int, minute: int = 0) -> tuple[str, str]:
    day = (datetime.now(PARIS) + timedelta(days=days)).date()
    return day.isoformat(), f"{hour:02d}:{minute:02d}"


async def states(running: AgendaSite) -> dict[str, int]:
    async with running.gateway.engine.connect() as conn:
        rows = await conn.execute(select(Reminder.state, func.count()).group_by(Reminder.state))
        return {state: count for state, count in rows}


async def test_an_appointment_is_reminded_the_day_before_at_the_chosen_hour_once(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    agenda = Agenda(site.gateway.engine, site.gateway.settings, None)
    claire = await profile(site, "adult_1")
    day, clock = in_days(3, 10)
    await agenda.add(claire, "Claire Martin", Draft(day=day, clock=clock, title="Dentiste", place="Rue des Lilas"))
    outbox = tmp_path / "reminders"
    sender = worker(site, outbox)
    the_day_before = datetime.combine(date.fromisoformat(day) - timedelta(days=1), time(9), tzinfo=PARIS)
    assert await sender.run_once(now=the_day_before - timedelta(minutes=1)) == 0
    assert await sender.run_once(now=the_day_before + timedelta(minutes=1)) == 1
    [reminder] = mails(outbox)
    assert reminder["To"] == site.patient("adult_1")["email"] and "10 h" in reminder["Subject"]
    assert "Dentiste" in reminder.get_content() and "Rue des Lilas" in reminder.get_content()  # what she typed herself
    assert await sender.run_once(now=the_day_before + timedelta(minutes=2)) == 0
    assert await worker(site, outbox).run_once(now=the_day_before + timedelta(hours=3)) == 0  # another process, later: nothing
    assert len(mails(outbox)) == 1


async def test_the_patient_chooses_when_and_a_changed_appointment_is_reminded_at_its_new_time(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    agenda = Agenda(site.gateway.engine, site.gateway.settings, None)
    claire = await profile(site, "adult_1")
    await agenda.save_prefs(claire, store.Prefs(lead_days=0, hour=7))
    day, clock = in_days(4, 15)
    key = await agenda.add(claire, "Claire", Draft(day=day, clock=clock, title="Kiné"))
    later, _ = in_days(6, 15)
    await agenda.edit(claire, key, Draft(day=later, clock=clock, title="Kiné"))
    sender = worker(site, tmp_path / "out")
    assert await sender.run_once(now=datetime.combine(date.fromisoformat(day), time(7, 5), tzinfo=PARIS)) == 0  # the old date: cancelled
    assert await sender.run_once(now=datetime.combine(date.fromisoformat(later), time(7, 5), tzinfo=PARIS)) == 1
    assert (await states(site)) == {"cancelled": 1, "sent": 1}


async def test_an_invitation_is_reminded_with_its_time_and_nothing_the_professional_wrote(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    start = (datetime.now(PARIS) + timedelta(days=5)).strftime("%Y%m%dT093000")
    await site.invite(
        patient, ics(organizer=site.doctor, attendee=patient, start=start, summary="Bilan cardiologique", location="Service de cardiologie")
    )
    sender = worker(site, tmp_path / "out")
    assert await sender.run_once(now=the_day_before(5)) == 1
    [reminder] = mails(tmp_path / "out")
    text = reminder.get_content() + str(reminder["Subject"])
    assert "9 h 30" in text and "cardio" not in text.lower() and "Sophie" not in text


async def test_no_reminder_for_an_opted_out_or_closed_profile(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    agenda = Agenda(site.gateway.engine, site.gateway.settings, None)
    claire, paul = await profile(site, "adult_1"), await profile(site, "adult_2")
    day, clock = in_days(3, 10)
    await agenda.add(claire, "Claire", Draft(day=day, clock=clock, title="Dentiste"))
    await agenda.add(paul, "Paul", Draft(day=day, clock=clock, title="Radio"))
    async with site.gateway.engine.begin() as conn:  # Claire turns reminders off after they were queued
        await store.save_prefs(conn, claire.account.id, store.Prefs(reminders=False))
        await patients.set_status(conn, paul.account.id, patients.PatientStatus.CLOSED)
    assert await worker(site, tmp_path / "out").run_once(now=the_day_before(3)) == 2
    assert mails(tmp_path / "out") == [] and (await states(site)) == {"cancelled": 2}


async def test_a_minors_appointments_remind_the_guardian_but_never_a_secret_one(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    minor = site.patient("minor")["address"]
    start = (datetime.now(PARIS) + timedelta(days=5)).strftime("%Y%m%dT160000")
    await site.invite(minor, ics(organizer=site.doctor, attendee=minor, uid="a@x", start=start, summary="Vaccin"))
    await site.invite(
        minor, ics(organizer=site.doctor, attendee=minor, uid="b@x", start=start, summary="Consultation", extra="CLASS:PRIVATE\r\n")
    )
    assert await worker(site, tmp_path / "out").run_once(now=the_day_before(5)) == 2
    [reminder] = mails(tmp_path / "out")
    assert reminder["To"] == site.patient("adult_1")["email"] and "Léa Martin" in str(reminder["Subject"])
    assert (await states(site)) == {"sent": 1, "cancelled": 1}


async def test_the_daily_job_queues_prevention_items_falling_due_once(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    """Claire (born 14 March 1985) turns 45 on 14 March 2030: the 45-50 check-up and the dTP
    booster fall due; with the default the reminder goes the day before."""
    engine = site.gateway.engine
    day = date(2030, 3, 13)
    morning = datetime.combine(day, time(2), tzinfo=PARIS)
    job = DailyJob(engine, load_table(), chunk=1, batch=2)  # tiny chunks: several claims, several batches
    report = await job.run(day, now=morning)
    assert report.queued == 2 and report.patients == 1  # of the demo's patients, only Claire left the database
    again = await DailyJob(engine, load_table()).run(day, now=morning)  # another process the same day: nothing left to do
    assert again.chunks == 0
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Reminder.ref, Reminder.occurrence, Reminder.send_at))).all()
    assert sorted(row.ref for row in rows) == ["bilan-45-50", "vaccin-dtp-45-ans"] and {row.occurrence for row in rows} == {"2030-03-14"}
    await DailyJob(engine, load_table()).chunk_once(day, 0, 1_000_000, now=morning)  # the same range again: no duplicate
    assert (await states(site)) == {"scheduled": 2}
    claire = await profile(site, "adult_1")
    agenda = Agenda(engine, site.gateway.settings, None)
    await agenda.mark(claire, "Claire", "vaccin-dtp-45-ans", done_on=date(2026, 1, 5), not_applicable=False, today=date(2030, 3, 13))
    sender = worker(site, tmp_path / "out")
    assert await sender.run_once(now=datetime.combine(day, time(9, 1), tzinfo=PARIS)) == 2
    [reminder] = mails(tmp_path / "out")
    assert str(reminder["Subject"]) == "Rappel de prévention" and "bilan" not in reminder.get_content().lower()
    assert (await states(site)) == {"sent": 1, "cancelled": 1}  # the booster was marked done in between


async def test_reminders_go_exactly_once_across_processes_and_a_crash(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    agenda = Agenda(site.gateway.engine, site.gateway.settings, None)
    claire = await profile(site, "adult_1")
    tomorrow = (datetime.now(PARIS) + timedelta(days=1)).date().isoformat()
    await agenda.save_prefs(claire, store.Prefs(hour=0))  # the day before at midnight: already past, so due now
    for minute in range(40):
        await agenda.add(
            claire, "Claire", Draft(day=tomorrow, clock=f"{12 + minute // 60:02d}:{minute % 60:02d}", title=f"Séance {minute}")
        )
    crashed = worker(site, tmp_path / "never")
    crashed.batch = 10
    assert len(await crashed.claim()) == 10  # claimed, then the process died before sending
    settings = site.gateway.settings
    env = {**os.environ, "CADUCEE_DATA_DIR": str(settings.data_dir), "CADUCEE_DATABASE_URL": settings.effective_database_url}
    processes = [
        subprocess.Popen([sys.executable, "-m", "caducee", "agenda", "remind"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [await asyncio.to_thread(process.communicate, timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    sent = mails(settings.data_dir / "outbox", "Rappel : rendez-vous")
    assert len(sent) == 30
    later = worker(site, settings.data_dir / "outbox")  # after the crashed lease ran out
    assert await later.run_once(now=datetime.now(UTC) + LEASE + timedelta(minutes=1)) == 10
    texts = sorted(
        message.get_content().split("Rendez-vous : ")[1].split("\n")[0]
        for message in mails(settings.data_dir / "outbox", "Rappel : rendez-vous")
    )
    assert texts == sorted(f"Séance {minute}" for minute in range(40))  # each once
    assert (await states(site)) == {"sent": 40}


async def test_the_daily_job_finds_exactly_what_evaluating_everyone_finds(engine) -> None:  # type: ignore[no-untyped-def]
    """The job filters in the database (candidate birth dates, campaign age, mark dates);
    on 600 random patients with random marks and lead times, over several days, it queues
    what evaluating every patient one by one queues."""
    import random

    from sqlalchemy import insert

    from caducee.agenda.due import History, falling_due
    from caducee.agenda.models import Preferences, PreventionMark
    from caducee.annuaire.models import Patient

    table = load_table()
    keys = [rule.key for rule in table.rules]
    chance = random.Random(11)
    start = date(2026, 10, 13)
    people, marks, prefs = [], [], []
    for number in range(1, 601):
        born = start - timedelta(days=chance.randrange(0, 95 * 365))
        people.append(
            {
                "id": number,
                "ins": f"{number:015d}",
                "last_name": "X",
                "first_names": "Y",
                "birth_date": born,
                "sex": chance.choice("MFI"),
                "status": chance.choice(["activated"] * 9 + ["closed"]),
            }
        )
        for _ in range(chance.choice([0, 0, 1, 2, 3])):
            marks.append(
                {
                    "patient_id": number,
                    "item_key": chance.choice(keys),
                    "done_on": born + timedelta(days=chance.randrange(0, max(1, (start - born).days))),
                }
            )
        if chance.random() < 0.3:
            prefs.append(
                {
                    "patient_id": number,
                    "reminders": chance.random() > 0.2,
                    "lead_days": chance.choice([0, 1, 2, 7]),
                    "hour": 9,
                    "timezone": "Europe/Paris",
                }
            )
    async with engine.begin() as conn:
        await conn.execute(insert(Patient), people)
        await conn.execute(insert(PreventionMark), marks)
        await conn.execute(insert(Preferences), prefs)
    chosen = {row["patient_id"]: row for row in prefs}
    found = 0
    for day in (start + timedelta(days=shift) for shift in range(4)):  # 15 October opens the flu campaign
        expected = set()
        for person in people:
            mine = chosen.get(person["id"], {"reminders": True, "lead_days": 1})
            if person["status"] != "activated" or not mine["reminders"]:
                continue
            target = day + timedelta(days=mine["lead_days"])
            history = History.of((m["item_key"], m["done_on"]) for m in marks if m["patient_id"] == person["id"])
            expected |= {
                (person["id"], item.key, target.isoformat())
                for item in falling_due(table, person["birth_date"], person["sex"], history, target)
            }
        async with engine.begin() as conn:
            await conn.execute(Reminder.__table__.delete())
        await DailyJob(engine, table, chunk=150, batch=40).run(day, now=datetime.combine(day, time(2), tzinfo=PARIS))
        async with engine.connect() as conn:
            queued = {
                (r.patient_id, r.ref, r.occurrence)
                for r in await conn.execute(select(Reminder.patient_id, Reminder.ref, Reminder.occurrence))
            }
        assert queued == expected, (day, queued ^ expected)
        found += len(queued)
    assert found > 20  # the flu campaign alone brings many


class _DiesAfterSending(ReminderWorker):
    """A worker whose process dies after the notifier took the email, before "sent" is written."""

    async def _finish(self, row, state: str, why: str) -> None:  # type: ignore[no-untyped-def]
        raise SystemExit("killed")


async def test_a_worker_dying_after_the_hand_off_does_not_send_the_reminder_twice(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    agenda = Agenda(site.gateway.engine, site.gateway.settings, None)
    claire = await profile(site, "adult_1")
    day, clock = in_days(3, 10)
    await agenda.add(claire, "Claire Martin", Draft(day=day, clock=clock, title="Dentiste"))
    outbox = tmp_path / "reminders"
    due = datetime.combine(date.fromisoformat(day) - timedelta(days=1), time(9, 1), tzinfo=PARIS)
    dying = _DiesAfterSending(
        site.gateway.engine, OutboxNotifier(outbox, "Caducée <n@demo.mssante.fr>"), load_table(), webmail_url="https://caducee.example/"
    )
    try:
        await dying.run_once(now=due)
    except SystemExit:
        pass
    assert len(mails(outbox)) == 1 and (await states(site)) == {"scheduled": 1}  # sent, but not recorded
    assert await worker(site, outbox).run_once(now=due + LEASE + timedelta(seconds=1)) == 1  # the lease ran out: claimed again
    [reminder] = mails(outbox)  # the same Message-ID: the outbox kept one
    assert reminder["Message-ID"].startswith("<rappel-") and (await states(site)) == {"sent": 1}
