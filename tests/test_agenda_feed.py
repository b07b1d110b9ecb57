"""The calendar feed: a private iCalendar URL per patient (a long random token stored
hashed), revocable and renewable from the webmail, valid RFC 5545 as `icalendar` parses it
back and as a real client nobody here wrote reads it: Debian's vdirsyncer subscribes to it
over HTTP into a local calendar that khal then lists."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import subprocess
from contextlib import aclosing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import icalendar
import pytest
from agenda_helpers import AgendaSite, first_link, ics, site  # noqa: F401 - the fixture
from sqlalchemy import select

from caducee.agenda.models import FeedToken


def _day(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


async def subscribe(client: httpx.AsyncClient, csrf: str) -> str:
    page = await client.post("/agenda/abonnement", data={"csrf": csrf, "action": "creer"})
    assert page.status_code == 200 and "ne sera plus affichée" in html.unescape(page.text)
    return html.unescape(first_link(page.text, r'id="adresse" value="([^"]+)"'))


async def test_the_feed_is_valid_icalendar_with_appointments_and_prevention(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient, summary="Consultation de suivi"))
    client, csrf = await site.logged_in()
    async with aclosing(client):
        await client.post(
            "/agenda/rendez-vous/nouveau",
            data={"csrf": csrf, "titre": "Dentiste", "date": _day(6), "heure": "16:00", "lieu": "Rue de Belleville"},
        )
        url = await subscribe(client, csrf)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/agenda/flux/[A-Za-z0-9_-]{43}\.ics", url)
    async with site.client() as anonymous:  # no session: the token is the key
        answer = await anonymous.get(url.split(str(site.http.port), 1)[1])
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/calendar")
    calendar = icalendar.Calendar.from_ical(answer.content)
    assert str(calendar["VERSION"]) == "2.0" and calendar["PRODID"] and "Claire Martin" in str(calendar["X-WR-CALNAME"])
    events = {str(event["SUMMARY"]): event for event in calendar.walk("VEVENT")}
    assert str(events["Dentiste"]["LOCATION"]) == "Rue de Belleville" and str(events["Dentiste"]["STATUS"]) == "CONFIRMED"
    assert str(events["Consultation de suivi"]["STATUS"]) == "TENTATIVE"  # not answered yet
    assert any(name.startswith("À prévoir : ") for name in events)
    for event in calendar.walk("VEVENT"):
        assert event["UID"] and event["DTSTAMP"] and event["DTSTART"]
    assert b"\r\n" in answer.content and all(len(line) <= 75 for line in answer.content.split(b"\r\n"))  # folded lines
    async with site.gateway.engine.connect() as conn:
        stored = (await conn.execute(select(FeedToken.token_hash))).scalars().all()
    token = url.rsplit("/", 1)[1].removesuffix(".ics")
    assert token not in stored and len(stored[0]) == 64  # only its SHA-256 is kept


@pytest.mark.skipif(not shutil.which("vdirsyncer") or not shutil.which("khal"), reason="make install puts Debian's vdirsyncer and khal")
async def test_a_real_calendar_client_subscribes(site: AgendaSite, tmp_path: Path) -> None:  # noqa: F811
    client, csrf = await site.logged_in()
    async with aclosing(client):
        await client.post("/agenda/rendez-vous/nouveau", data={"csrf": csrf, "titre": "Dentiste", "date": _day(6), "heure": "16:00"})
        await client.post("/agenda/rendez-vous/nouveau", data={"csrf": csrf, "titre": "Prise de sang", "date": _day(8)})
        url = await subscribe(client, csrf)
    local = tmp_path / "calendars" / "sante"
    local.mkdir(parents=True)
    (tmp_path / "vdirsyncer.conf").write_text(
        f'[general]\nstatus_path = "{tmp_path / "status"}/"\n\n'
        '[pair sante]\na = "sante_caducee"\nb = "sante_local"\ncollections = null\n\n'
        f'[storage sante_caducee]\ntype = "http"\nurl = "{url}"\n\n'
        f'[storage sante_local]\ntype = "filesystem"\npath = "{local}/"\nfileext = ".ics"\n'
    )
    (tmp_path / "khal.conf").write_text(
        f"[calendars]\n[[sante]]\npath = {local}/\ntype = calendar\n\n"
        "[locale]\ntimeformat = %H:%M\ndateformat = %Y-%m-%d\nlongdateformat = %Y-%m-%d\n"
        "datetimeformat = %Y-%m-%d %H:%M\nlongdatetimeformat = %Y-%m-%d %H:%M\n"
        "local_timezone = Europe/Paris\ndefault_timezone = Europe/Paris\n"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}

    def run(*command: str) -> str:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, input="y\n" * 5)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    await asyncio.to_thread(run, "vdirsyncer", "-c", str(tmp_path / "vdirsyncer.conf"), "discover")
    await asyncio.to_thread(run, "vdirsyncer", "-c", str(tmp_path / "vdirsyncer.conf"), "sync")
    assert len(list(local.glob("*.ics"))) >= 2
    listing = await asyncio.to_thread(run, "khal", "-c", str(tmp_path / "khal.conf"), "list", "today", "400d")
    assert "16:00-16:30 Dentiste" in listing and "Prise de sang" in listing, listing


async def test_renewing_or_revoking_kills_the_old_address(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in()
    async with aclosing(client):
        first = await subscribe(client, csrf)
        assert "Une adresse d'abonnement est active depuis" in html.unescape((await client.get("/agenda/reglages")).text)
        second = await subscribe(client, csrf)
        async with site.client() as anonymous:
            assert (await anonymous.get(first.split(str(site.http.port), 1)[1])).status_code == 404
            assert (await anonymous.get(second.split(str(site.http.port), 1)[1])).status_code == 200
            revoked = await client.post("/agenda/abonnement", data={"csrf": csrf, "action": "revoquer"})
            assert revoked.status_code == 303
            assert (await anonymous.get(second.split(str(site.http.port), 1)[1])).status_code == 404
        assert "Vous n'avez pas d'adresse d'abonnement" in html.unescape((await client.get("/agenda/reglages")).text)
        assert (await client.post("/agenda/abonnement", data={"csrf": "forged", "action": "creer"})).status_code == 403


async def test_a_token_shows_its_own_patient_only_and_a_made_up_one_nothing(site: AgendaSite) -> None:  # noqa: F811
    claire, claire_csrf = await site.logged_in("adult_1")
    async with aclosing(claire):
        await claire.post("/agenda/rendez-vous/nouveau", data={"csrf": claire_csrf, "titre": "Gynécologue", "date": _day(6)})
        claire_url = await subscribe(claire, claire_csrf)
    paul, paul_csrf = await site.logged_in("adult_2")
    async with aclosing(paul):
        await paul.post("/agenda/rendez-vous/nouveau", data={"csrf": paul_csrf, "titre": "Urologue", "date": _day(7)})
        paul_url = await subscribe(paul, paul_csrf)
        # Paul's revoking revokes his, never Claire's
        await paul.post("/agenda/abonnement", data={"csrf": paul_csrf, "action": "revoquer"})
    async with site.client() as anonymous:
        claire_feed = (await anonymous.get(claire_url.split(str(site.http.port), 1)[1])).text
        assert "Gynécologue" in claire_feed and "Urologue" not in claire_feed
        assert (await anonymous.get(paul_url.split(str(site.http.port), 1)[1])).status_code == 404
        for made_up in ("x" * 43 + ".ics", "", "../../etc/passwd", "a" * 5000 + ".ics"):
            assert (await anonymous.get(f"/agenda/flux/{made_up}")).status_code == 404


async def test_a_guardians_feed_of_a_minor_leaves_out_the_secret_items(site: AgendaSite) -> None:  # noqa: F811
    minor = site.patient("minor")["address"]
    await site.invite(
        minor, ics(organizer=site.doctor, attendee=minor, uid="s@x", summary="Consultation confidentielle", extra="CLASS:CONFIDENTIAL\r\n")
    )
    await site.invite(minor, ics(organizer=site.doctor, attendee=minor, uid="v@x", summary="Vaccin"))
    client, csrf = await site.logged_in("adult_1")
    async with aclosing(client):
        profiles = await client.get("/profils")
        lea = first_link(profiles.text, r'name="profil" value="(\d+)"[^>]*>\s*<label[^>]*>Léa')
        await client.post("/profils", data={"csrf": csrf, "profil": lea})
        url = await subscribe(client, csrf)
    async with site.client() as anonymous:
        feed = (await anonymous.get(url.split(str(site.http.port), 1)[1])).text
    assert "Vaccin" in feed and "confidentielle" not in feed and "Agenda santé de Léa Martin" in feed


@pytest.mark.parametrize("ends_by", ["guardianship-removed", "child-comes-of-age"])
async def test_a_guardians_feed_stops_when_the_guardianship_does(site: AgendaSite, ends_by: str) -> None:  # noqa: F811
    """A feed token is a standing authorisation: it is checked at each fetch against the
    maker's right today, not the right they had when they made it."""
    from sqlalchemy import text

    minor = site.patient("minor")["address"]
    await site.invite(minor, ics(organizer=site.doctor, attendee=minor, uid="v2@x", summary="Vaccin"))
    client, csrf = await site.logged_in("adult_1")
    async with aclosing(client):
        lea = first_link((await client.get("/profils")).text, r'name="profil" value="(\d+)"[^>]*>\s*<label[^>]*>Léa')
        await client.post("/profils", data={"csrf": csrf, "profil": lea})
        url = await subscribe(client, csrf)
    path = url.split(str(site.http.port), 1)[1]
    async with site.client() as anonymous:
        assert (await anonymous.get(path)).status_code == 200
        async with site.gateway.engine.begin() as conn:
            if ends_by == "guardianship-removed":
                await conn.execute(text("DELETE FROM guardianships WHERE minor_id = :id"), {"id": int(lea)})
            else:
                await conn.execute(
                    text("UPDATE patients SET birth_date = :born WHERE id = :id"), {"born": date(2000, 1, 1), "id": int(lea)}
                )
        assert (await anonymous.get(path)).status_code == 404
