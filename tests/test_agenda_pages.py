"""The agenda's pages over HTTP: a patient's own appointments (add with a professional from
the annuaire, edit, delete), a guardian managing a minor's agenda, a carer kept out, the
prevention calendar marked done or not applicable, the month view and the .ics download."""

from __future__ import annotations

import html
from contextlib import aclosing
from datetime import UTC, date, datetime, timedelta

import icalendar
from agenda_helpers import AgendaSite, first_link, ics, site  # noqa: F401 - the fixture


def _day(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).date().isoformat()


async def test_a_patient_adds_edits_and_deletes_an_appointment(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in()
    async with aclosing(client):
        search = await client.get("/agenda/rendez-vous/nouveau", params={"cherche_nom": "Bernard", "cherche_lieu": "Paris"})
        choose = first_link(search.text, r'href="(/agenda/rendez-vous/nouveau\?pro=sophie[^"]+)"')
        form = await client.get(choose.replace("&amp;", "&"))
        assert "Sophie Bernard" in form.text and 'name="pro" value="sophie.bernard@demo.mssante.fr"' in form.text
        answer = await client.post(
            "/agenda/rendez-vous/nouveau",
            data={
                "csrf": csrf,
                "pro": "sophie.bernard@demo.mssante.fr",
                "titre": "Contrôle tension",
                "date": _day(5),
                "heure": "09:15",
                "duree": "30",
                "lieu": "Cabinet",
                "note": "Apporter le carnet",
            },
        )
        assert answer.status_code == 303, answer.text[:2000]
        page = await client.get(answer.headers["location"])
        assert (
            "Le rendez-vous est ajouté" in page.text
            and "9 h 15" in page.text
            and "Dr Sophie Bernard" in page.text
            and "Apporter le carnet" in page.text
        )
        key = int(answer.headers["location"].split("/")[-1].split("?")[0])
        edit = await client.get(f"/agenda/rendez-vous/{key}/modifier")
        assert 'value="09:15"' in edit.text and "Contrôle tension" in edit.text
        changed = await client.post(
            f"/agenda/rendez-vous/{key}/modifier",
            data={
                "csrf": csrf,
                "pro": "sophie.bernard@demo.mssante.fr",
                "titre": "Contrôle tension",
                "date": _day(6),
                "heure": "10:00",
                "duree": "45",
            },
        )
        assert changed.status_code == 303
        assert "10 h à 10 h 45" in (await client.get(f"/agenda/rendez-vous/{key}")).text
        assert "Contrôle tension" in (await client.get("/agenda")).text
        confirm = await client.get(f"/agenda/rendez-vous/{key}/supprimer")
        assert "Supprimer ce rendez-vous ?" in confirm.text
        gone = await client.post(f"/agenda/rendez-vous/{key}/supprimer", data={"csrf": csrf})
        assert gone.status_code == 303 and "Contrôle tension" not in (await client.get("/agenda?info=supprime")).text
        assert (await client.get(f"/agenda/rendez-vous/{key}")).status_code == 404


async def test_bad_appointment_input_is_refused_with_what_was_typed_kept(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in()
    async with aclosing(client):
        for values, why in (
            ({"titre": "Dentiste", "date": "9999-12-31", "heure": "10:00"}, "trop loin"),
            ({"titre": "Dentiste", "date": "31/02/2026"}, "Indiquez la date"),
            ({"titre": "Dentiste", "date": _day(3), "heure": "25:99"}, "Indiquez l'heure"),
            ({"titre": "  ", "date": _day(3)}, "Donnez un nom"),
        ):
            answer = await client.post("/agenda/rendez-vous/nouveau", data={"csrf": csrf, **values, "note": "gardé"})
            assert answer.status_code == 400 and why in html.unescape(answer.text) and "gardé" in answer.text
        assert (await client.post("/agenda/rendez-vous/nouveau", data={"csrf": "wrong", "titre": "x", "date": _day(3)})).status_code == 403
        assert (await site.client().get("/agenda")).status_code == 303  # not signed in: to the login page


async def test_an_invitation_cannot_be_edited_only_answered(site: AgendaSite) -> None:  # noqa: F811
    patient = site.patient("adult_1")["address"]
    await site.invite(patient, ics(organizer=site.doctor, attendee=patient))
    [row] = await site.appointments()
    client, csrf = await site.logged_in()
    async with aclosing(client):
        assert (await client.get(f"/agenda/rendez-vous/{row.id}/modifier")).status_code == 404
        refused = await client.post(f"/agenda/rendez-vous/{row.id}/modifier", data={"csrf": csrf, "titre": "x", "date": _day(3)})
        assert refused.status_code == 400 and "seul le professionnel peut le modifier" in refused.text


async def test_one_patient_never_reaches_anothers_appointment(site: AgendaSite) -> None:  # noqa: F811
    claire, claire_csrf = await site.logged_in("adult_1")
    async with aclosing(claire):
        made = await claire.post(
            "/agenda/rendez-vous/nouveau", data={"csrf": claire_csrf, "titre": "Ophtalmologue", "date": _day(4), "heure": "11:00"}
        )
        key = int(made.headers["location"].split("/")[-1].split("?")[0])
    paul, paul_csrf = await site.logged_in("adult_2")
    async with aclosing(paul):
        for url in (f"/agenda/rendez-vous/{key}", f"/agenda/rendez-vous/{key}/modifier", f"/agenda/rendez-vous/{key}/rendez-vous.ics"):
            assert (await paul.get(url)).status_code == 404
        assert (await paul.post(f"/agenda/rendez-vous/{key}/supprimer", data={"csrf": paul_csrf})).status_code == 404
        # Paul is Claire's carer (messages, read only): her agenda is not his to see
        profiles = await paul.get("/profils")
        claire_id = first_link(profiles.text, r'name="profil" value="(\d+)"[^>]*>\s*<label[^>]*>Claire')
        await paul.post("/profils", data={"csrf": paul_csrf, "profil": claire_id})
        assert (await paul.get("/agenda")).status_code == 404
        assert "Mon agenda" not in (await paul.get("/")).text
    assert len(await site.appointments("adult_1")) == 1


async def test_a_guardian_manages_the_minors_agenda_and_sees_the_child_examinations(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in("adult_1")
    async with aclosing(client):
        profiles = await client.get("/profils")
        lea = first_link(profiles.text, r'name="profil" value="(\d+)"[^>]*>\s*<label[^>]*>Léa')
        await client.post("/profils", data={"csrf": csrf, "profil": lea})
        page = await client.get("/agenda/prevention")
        assert "Examen de l'enfant" in html.unescape(page.text)
        assert "Vaccin contre les papillomavirus" in page.text  # Léa is 11 (born June 2015)
        made = await client.post("/agenda/rendez-vous/nouveau", data={"csrf": csrf, "titre": "Pédiatre", "date": _day(9), "heure": "17:00"})
        assert made.status_code == 303
    assert [row.title for row in await site.appointments("minor")] == ["Pédiatre"]
    assert await site.appointments("adult_1") == []


async def test_a_minors_secret_invitation_is_hidden_from_the_guardian(site: AgendaSite) -> None:  # noqa: F811
    minor = site.patient("minor")["address"]
    await site.invite(
        minor,
        ics(organizer=site.doctor, attendee=minor, uid="secret@x", summary="Consultation confidentielle", extra="CLASS:CONFIDENTIAL\r\n"),
    )
    await site.invite(minor, ics(organizer=site.doctor, attendee=minor, uid="vaccin@x", summary="Vaccin HPV"))
    rows = {row.uid: row for row in await site.appointments("minor")}
    assert rows["secret@x"].secret and not rows["vaccin@x"].secret
    client, csrf = await site.logged_in("adult_1")
    async with aclosing(client):
        profiles = await client.get("/profils")
        lea = first_link(profiles.text, r'name="profil" value="(\d+)"[^>]*>\s*<label[^>]*>Léa')
        await client.post("/profils", data={"csrf": csrf, "profil": lea})
        listing = await client.get("/agenda")
        assert "Vaccin HPV" in listing.text and "confidentielle" not in listing.text
        assert (await client.get(f"/agenda/rendez-vous/{rows['secret@x'].id}")).status_code == 404
        month = rows["secret@x"].starts_at.strftime("%Y-%m")
        assert "confidentielle" not in (await client.get(f"/agenda/mois?mois={month}")).text


async def test_the_prevention_calendar_is_marked_done_or_not_applicable(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in("adult_1")  # Claire, 41: cervical screening (HPV test) is late
    async with aclosing(client):
        page = await client.get("/agenda/prevention")
        assert "test HPV" in page.text and "En retard" in page.text and "version 2025.1" in page.text
        form = await client.get("/agenda/prevention/col-test-hpv")
        assert "Noter comme fait" in form.text
        future = await client.post("/agenda/prevention/col-test-hpv", data={"csrf": csrf, "action": "fait", "date": _day(30)})
        assert future.status_code == 400 and "dans l'avenir" in html.unescape(future.text)
        before = await client.post("/agenda/prevention/col-test-hpv", data={"csrf": csrf, "action": "fait", "date": "1900-01-01"})
        assert before.status_code == 400
        done = await client.post(
            "/agenda/prevention/col-test-hpv",
            data={"csrf": csrf, "action": "fait", "date": (date.today() - timedelta(days=60)).isoformat()},
        )
        assert done.status_code == 303
        page = await client.get("/agenda/prevention")
        assert "À partir du" in page.text  # the next HPV test, five years on
        await client.post("/agenda/prevention/vaccin-dtp-25-ans", data={"csrf": csrf, "action": "non-concerne"})
        page = await client.get("/agenda/prevention")
        assert "Ne vous concerne pas" in page.text
        await client.post("/agenda/prevention/vaccin-dtp-25-ans", data={"csrf": csrf, "action": "annuler"})
        assert "Ne vous concerne pas" not in (await client.get("/agenda/prevention")).text
        assert (await client.get("/agenda/prevention/pas-un-vaccin")).status_code == 404


async def test_the_month_view_and_the_ics_download(site: AgendaSite) -> None:  # noqa: F811
    client, csrf = await site.logged_in()
    async with aclosing(client):
        day = _day(3)
        made = await client.post(
            "/agenda/rendez-vous/nouveau",
            data={"csrf": csrf, "titre": "Radiologie", "date": day, "heure": "08:30", "lieu": "Centre d'imagerie"},
        )
        key = int(made.headers["location"].split("/")[-1].split("?")[0])
        month = await client.get(f"/agenda/mois?mois={day[:7]}")
        assert "08:30 Radiologie" in html.unescape(month.text) and '<table class="month">' in month.text
        assert (await client.get("/agenda/mois?mois=9999-99")).status_code == 200  # nonsense: this month
        download = await client.get(f"/agenda/rendez-vous/{key}/rendez-vous.ics")
        assert download.headers["content-type"].startswith("text/calendar") and "attachment" in download.headers["content-disposition"]
        calendar = icalendar.Calendar.from_ical(download.content)
        [event] = calendar.walk("VEVENT")
        assert (
            str(event["SUMMARY"]) == "Radiologie" and str(event["LOCATION"]) == "Centre d'imagerie" and str(calendar["METHOD"]) == "PUBLISH"
        )


async def test_the_first_pages_cache_is_never_stale_across_processes(site: AgendaSite) -> None:  # noqa: F811
    """Two workers (two Agenda services): what one changes, the other's cached first page shows."""
    from caducee.agenda.service import Agenda, Draft
    from caducee.annuaire import patients
    from caducee.annuaire.patients import Profile

    async with site.gateway.engine.connect() as conn:
        account = await patients.account_for_address(conn, site.patient("adult_1")["address"])
    assert account is not None
    claire = Profile(account, "self", True)
    first, second = (Agenda(site.gateway.engine, site.gateway.settings, None) for _ in range(2))
    assert (await first.overview(claire))[0] == []
    key = await second.add(claire, "Claire", Draft(day=_day(2), clock="10:00", title="Kiné"))
    assert [view.row.title for view in (await first.overview(claire))[0]] == ["Kiné"]
    await second.edit(claire, key, Draft(day=_day(2), clock="11:00", title="Kiné (11 h)"))
    assert [view.row.title for view in (await first.overview(claire))[0]] == ["Kiné (11 h)"]
    await second.mark(claire, "Claire", "vaccin-dtp-25-ans", done_on=date(2011, 5, 1), not_applicable=False, today=date.today())
    assert "vaccin-dtp-25-ans" not in {shown.item.key for shown in (await first.overview(claire))[1].overdue}
    await second.delete(claire, key)
    assert (await first.overview(claire))[0] == []
