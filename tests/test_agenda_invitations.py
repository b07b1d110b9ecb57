"""Invitations by mail (RFC 5545/5546): a professional's client sends METHOD:REQUEST over
SMTP submission; the appointment appears in the patient's agenda, linked to the message;
the patient accepts or declines in the webmail and a METHOD:REPLY goes back through the
accept pipeline as a reply in that conversation. Updates, cancellations, closed
conversations and every bad input of the issue."""

from __future__ import annotations

import email
import email.policy
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import icalendar
import pytest
from agenda_helpers import AgendaSite, first_link, ics, site  # noqa: F401 - the fixture

from caducee.agenda import ical


def _calendar_of(raw: bytes) -> icalendar.Calendar:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            continue
        if part.get_content_type() == "text/calendar":
            return icalendar.Calendar.from_ical(part.get_content())
    inner = [p for p in message.walk() if p.get_content_type() == "message/rfc822"]
    for wrapper in inner:
        found = wrapper.get_payload()[0]
        for part in found.walk():
            if part.get_content_type() == "text/calendar":
                return icalendar.Calendar.from_ical(part.get_content())
    raise AssertionError("no calendar part")


async def test_an_invitation_becomes_an_appointment_and_the_patient_accepts(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")
    start = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y%m%dT143000")
    invitation, code = await site.invite(patient["address"], ics(organizer=site.doctor, attendee=patient["address"], start=start))
    assert code == 250
    [appointment] = await site.appointments()
    assert appointment.status == "needs-action" and appointment.source == "invitation"
    assert appointment.message_id_header == invitation["Message-ID"] and appointment.conversation_key
    local = appointment.starts_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (14, 30)
    client, csrf = await site.logged_in()
    async with aclosing(client):
        listing = await client.get("/agenda")
        assert "Consultation de suivi" in listing.text and "Invitation à confirmer" in listing.text
        page = await client.get(f"/agenda/rendez-vous/{appointment.id}")
        assert f'href="/conversations/{appointment.conversation_key}"' in page.text and "Accepter le rendez-vous" in page.text
        answer = await client.post(f"/agenda/rendez-vous/{appointment.id}/reponse", data={"csrf": csrf, "reponse": "accepter"})
        assert answer.status_code == 200 and "vous avez accepté ce rendez-vous" in answer.text
        assert "Vous avez accepté" in (await client.get("/agenda")).text
        conversation = await client.get(f"/conversations/{appointment.conversation_key}")
        assert "Vous avez écrit" in conversation.text  # the answer is a reply in that conversation (Sent copy)
    [raw] = [m for m in await site.gateway.inbox(site.doctor) if b"REPLY" in m]
    reply = email.message_from_bytes(raw, policy=email.policy.default)
    assert reply["In-Reply-To"] == invitation["Message-ID"]
    calendar = _calendar_of(raw)
    assert str(calendar["METHOD"]) == "REPLY"
    event = calendar.walk("VEVENT")[0]
    assert str(event["UID"]) == "rdv-1@cabinet-des-lilas.fr"
    attendee = event["ATTENDEE"]
    assert str(attendee).lower() == f"mailto:{patient['address']}" and attendee.params["PARTSTAT"] == "ACCEPTED"
    [again] = await site.appointments()
    assert again.status == "accepted"


async def test_declining_sends_a_declined_reply(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")
    await site.invite(patient["address"], ics(organizer=site.doctor, attendee=patient["address"]))
    [appointment] = await site.appointments()
    client, csrf = await site.logged_in()
    async with aclosing(client):
        answer = await client.post(f"/agenda/rendez-vous/{appointment.id}/reponse", data={"csrf": csrf, "reponse": "refuser"})
        assert "vous avez refusé" in answer.text
    [raw] = [m for m in await site.gateway.inbox(site.doctor) if b"REPLY" in m]
    assert _calendar_of(raw).walk("VEVENT")[0]["ATTENDEE"].params["PARTSTAT"] == "DECLINED"
    assert (await site.appointments())[0].status == "declined"


async def test_a_closed_conversation_refuses_the_reply_and_the_page_says_why(site: AgendaSite) -> None:  # noqa: F811
    from mail import message
    from test_gateway_rules import smtp_send

    patient = site.patient("adult_1")
    invitation, _ = await site.invite(patient["address"], ics(organizer=site.doctor, attendee=patient["address"]))
    fin = message(
        site.doctor,
        patient["address"],
        "[FIN] Invitation",
        "Je clos cet échange.",
        headers={"In-Reply-To": invitation["Message-ID"], "References": invitation["Message-ID"]},
    )
    assert (await __import__("asyncio").to_thread(smtp_send, site.gateway, fin, [patient["address"]]))[0] == 250
    [appointment] = await site.appointments()
    client, csrf = await site.logged_in()
    async with aclosing(client):
        page = await client.get(f"/agenda/rendez-vous/{appointment.id}")
        assert (
            "Accepter le rendez-vous" not in page.text
            and "Vous ne pouvez pas répondre à cette invitation" in page.text
            and "clos" in page.text
        )
        answer = await client.post(f"/agenda/rendez-vous/{appointment.id}/reponse", data={"csrf": csrf, "reponse": "accepter"})
        assert answer.status_code == 400 and "clos" in answer.text
    assert not [m for m in await site.gateway.inbox(site.doctor) if b"REPLY" in m]
    assert (await site.appointments())[0].status == "needs-action"


async def test_a_new_sequence_moves_it_an_old_one_is_ignored_and_cancel_cancels(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    day = (datetime.now(UTC) + timedelta(days=12)).strftime("%Y%m%d")
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient, start=f"{day}T100000"))
    [first] = await site.appointments()
    await site.invite(
        patient, ics(organizer=site.doctor, attendee=patient, start=f"{day}T110000", sequence=1, summary="Consultation (nouvel horaire)")
    )
    [moved] = await site.appointments()
    assert (
        moved.id == first.id and moved.starts_at - first.starts_at == timedelta(hours=1) and moved.title == "Consultation (nouvel horaire)"
    )
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient, start=f"{day}T090000", sequence=0))  # a late copy of the first
    assert (await site.appointments())[0].starts_at == moved.starts_at
    await site.invite(
        patient, ics(organizer=site.doctor, attendee=patient, start=f"{day}T110000", sequence=1, method="CANCEL"), method="CANCEL"
    )
    [cancelled] = await site.appointments()
    assert cancelled.status == "cancelled"
    client, _ = await site.logged_in()
    async with aclosing(client):
        page = await client.get(f"/agenda/rendez-vous/{cancelled.id}")
        assert "Annulé par le professionnel" in page.text and "Accepter le rendez-vous" not in page.text


async def test_a_recurring_invitation_gives_one_appointment_per_occurrence(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    await site.invite(
        patient,
        ics(organizer=site.doctor, attendee=patient, uid="kine@cabinet", summary="Kinésithérapie", extra="RRULE:FREQ=WEEKLY;COUNT=6\r\n"),
    )
    rows = await site.appointments()
    assert len(rows) == 6 and all(row.title == "Kinésithérapie" for row in rows)
    assert rows[1].starts_at - rows[0].starts_at == timedelta(days=7)


# ---- point 7: bad input, each a test ------------------------------------------------------------


def _far(days: int = 10) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y%m%dT100000")


BAD = {
    "malformed": lambda org, att: "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nDTSTART:pas une date\r\nUID:x\r\nEND:VCALENDAR\r\n",
    "huge": lambda org, att: ics(organizer=org, attendee=att, extra="".join(f"COMMENT:{'x' * 70}\r\n" for _ in range(4000))),
    "organiser-not-sender": lambda org, att: ics(organizer="karim.haddad@demo.mssante.fr", attendee=att),
    "attendee-not-recipient": lambda org, att: ics(organizer=org, attendee="178112a12345684@patient.mssante.fr"),
    "unknown-time-zone": lambda org, att: ics(organizer=org, attendee=att, tzid="Mars/Olympus_Mons"),
    "year-9999": lambda org, att: ics(organizer=org, attendee=att, start="99991231T100000"),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_a_bad_invitation_adds_nothing_but_the_message_is_delivered(site: AgendaSite, case: str) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    _, code = await site.invite(patient, BAD[case](site.doctor, patient))
    assert code == 250  # the mail itself is the professional's to send: it arrives
    assert await site.appointments() == []
    assert any(b"Vous \xc3\xaates invit\xc3\xa9(e)" in raw or b"invit" in raw for raw in await site.gateway.inbox(patient))


async def test_a_missing_time_zone_is_the_patients_own(site: AgendaSite) -> None:  # noqa: F811
    """A floating time (no TZID, no Z) means the same wall-clock time wherever the attendee
    is (RFC 5545 3.3.5): the patient's zone, Réunion here."""
    from caducee.agenda import store

    patient = site.patient("adult_1")["address"]
    async with site.gateway.engine.begin() as conn:
        await store.save_prefs(conn, await site.patient_id("adult_1"), store.Prefs(timezone="Indian/Reunion"))
    day = (datetime.now(UTC) + timedelta(days=8)).strftime("%Y%m%d")
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient, start=f"{day}T100000", tzid=None))
    [row] = await site.appointments()
    assert row.starts_at.astimezone(UTC).strftime("%Y%m%dT%H%M") == f"{day}T0600"  # 10:00 in Réunion is 06:00 UTC


async def test_a_rule_that_would_expand_forever_is_bounded(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient, uid="forever@x", extra="RRULE:FREQ=DAILY\r\n"))
    assert len(await site.appointments()) == ical.MAX_OCCURRENCES


def _year_ago() -> str:
    return (datetime.now(UTC) - timedelta(days=360)).strftime("%Y%m%dT100000")


_HOURLY_ZONE = (
    "BEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\n"
    "BEGIN:STANDARD\r\nDTSTART:16010101T000000\r\nRRULE:FREQ=HOURLY\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n"
    "BEGIN:DAYLIGHT\r\nDTSTART:16010101T003000\r\nRRULE:FREQ=HOURLY\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\n"
    "END:VTIMEZONE\r\n"
)

# Rules whose walk from their start would cost seconds to hours of CPU in the parser or the
# expansion: each refused before either runs, in microseconds.
COSTLY_RULES = {
    "every-second-from-a-year-ago": dict(start=_year_ago(), extra="RRULE:FREQ=SECONDLY\r\n"),
    "every-minute-from-a-year-ago": dict(start=_year_ago(), extra="RRULE:FREQ=MINUTELY\r\n"),
    "hourly": dict(extra="RRULE:FREQ=HOURLY;COUNT=100000\r\n"),
    "folded-rule": dict(start=_year_ago(), extra="RRULE:FREQ=MIN\r\n UTELY\r\n"),
    "lower-case-rule": dict(start=_year_ago(), extra="rrule:freq=secondly\r\n"),
    "rule-with-parameters": dict(start=_year_ago(), extra="RRULE;X-FOO=1:FREQ=SECONDLY\r\n"),
    "exrule": dict(start=_year_ago(), extra="RRULE:FREQ=DAILY\r\nEXRULE:FREQ=SECONDLY\r\n"),
    "daily-every-second-of-the-day": dict(
        extra="RRULE:FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24))) + ";BYMINUTE=0,1,2;BYSECOND=0,1\r\n"
    ),
    "no-frequency": dict(extra="RRULE:COUNT=10\r\n"),
}


@pytest.mark.parametrize("case", list(COSTLY_RULES))
def test_a_costly_recurrence_is_refused_before_it_is_walked(case: str) -> None:
    org, att = "sophie.bernard@demo.mssante.fr", "285037512345688@patient.mssante.fr"
    data = ics(organizer=org, attendee=att, **COSTLY_RULES[case]).encode()
    with pytest.raises(ical.InvalidCalendar, match="recur|values"):
        ical.parse_invitation(data, where=ZoneInfo("Europe/Paris"), now=datetime.now(UTC))


def test_a_time_zone_with_a_costly_rule_is_refused_before_the_parser_expands_it() -> None:
    org, att = "sophie.bernard@demo.mssante.fr", "285037512345688@patient.mssante.fr"
    zoned = ics(organizer=org, attendee=att).replace("METHOD:REQUEST\r\n", "METHOD:REQUEST\r\n" + _HOURLY_ZONE)
    with pytest.raises(ical.InvalidCalendar, match="time zone's rule"):
        ical.parse_invitation(zoned.encode(), where=ZoneInfo("Europe/Paris"), now=datetime.now(UTC))
    many = _HOURLY_ZONE.replace("FREQ=HOURLY", "FREQ=YEARLY").replace("BEGIN:STANDARD", "BEGIN:STANDARD", 1) * 11
    crowded = ics(organizer=org, attendee=att).replace("METHOD:REQUEST\r\n", "METHOD:REQUEST\r\n" + many)
    with pytest.raises(ical.InvalidCalendar, match="time-zone rules"):
        ical.parse_invitation(crowded.encode(), where=ZoneInfo("Europe/Paris"), now=datetime.now(UTC))
    outlook = _HOURLY_ZONE.replace("FREQ=HOURLY", "FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU", 1).replace(
        "FREQ=HOURLY", "FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU"
    )
    real = ics(organizer=org, attendee=att).replace("METHOD:REQUEST\r\n", "METHOD:REQUEST\r\n" + outlook)
    assert ical.parse_invitation(real.encode(), where=ZoneInfo("Europe/Paris"), now=datetime.now(UTC)).occurrences  # what Outlook sends


async def test_a_costly_invitation_is_delivered_without_an_appointment(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    _, code = await site.invite(
        patient, ics(organizer=site.doctor, attendee=patient, uid="dos@x", **COSTLY_RULES["every-minute-from-a-year-ago"])
    )
    assert code == 250 and await site.appointments() == []


def test_the_parser_gives_each_reason() -> None:
    now = datetime.now(UTC)
    where = __import__("zoneinfo").ZoneInfo("Europe/Paris")
    org, att = "sophie.bernard@demo.mssante.fr", "285037512345688@patient.mssante.fr"
    reasons = {}
    for case, build in BAD.items():
        try:
            parsed = ical.parse_invitation(build(org, att).encode(), where=where, now=now)
        except ical.InvalidCalendar as refused:
            reasons[case] = refused.reason
        else:
            reasons[case] = (parsed.organizer, sorted(parsed.attendees))
    assert "not iCalendar" in reasons["malformed"] or "DTSTART" in reasons["malformed"]
    assert "bytes" in reasons["huge"]
    assert "unknown time zone" in reasons["unknown-time-zone"]
    assert "out of range" in reasons["year-9999"]
    assert reasons["organiser-not-sender"][0] == "karim.haddad@demo.mssante.fr"  # refused against the envelope by the intake
    many = ics(organizer=org, attendee=att).replace("BEGIN:VEVENT", "BEGIN:VEVENT", 1)
    events = many.split("BEGIN:VEVENT")[1].split("END:VEVENT")[0]
    crowded = many.replace("END:VCALENDAR", ("BEGIN:VEVENT" + events + "END:VEVENT\r\n") * 60 + "END:VCALENDAR")
    with pytest.raises(ical.InvalidCalendar, match="more than"):
        ical.parse_invitation(crowded.encode(), where=where, now=now)
    never = ics(organizer=org, attendee=att, extra="RRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30\r\n")  # no 30 February: only DTSTART itself
    assert len(ical.parse_invitation(never.encode(), where=where, now=now).occurrences) <= 1
