"""The agenda's pages: server-rendered, in French, usable without JavaScript.

The upcoming list is the agenda's first page, the month view its second; each form
re-shows its page with one sentence when refused, and what was typed stays in it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from caducee.agenda.service import Draft, Refused, may_see
from caducee.agenda.store import LEADS, Prefs
from caducee.agenda.times import ZONES, french_day, french_month, local, zone
from caducee.agenda.web import agenda, page
from caducee.annuaire.service import SearchError
from caducee.core.ids import RowId
from caducee.webmail.service import actor_label
from caducee.webmail.web import Viewer, csrf_ok, current_viewer, render

router = APIRouter(include_in_schema=False)

NOTICES = {
    "ajoute": "Le rendez-vous est ajouté à votre agenda.",
    "modifie": "Le rendez-vous est modifié.",
    "supprime": "Le rendez-vous est supprimé.",
    "marque": "C'est noté.",
    "annule": "La marque est retirée.",
    "reglages": "Vos choix de rappel sont enregistrés.",
    "revoque": "L'adresse d'abonnement ne fonctionne plus. Les agendas abonnés ne recevront plus rien.",
}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _notice(request: Request) -> str | None:
    return NOTICES.get(request.query_params.get("info", ""))


async def _viewer(request: Request) -> Viewer | Response:
    viewer = await current_viewer(request)
    if viewer is None:
        response = redirect("/connexion")
        return response
    if not may_see(viewer.profile):  # a carer's delegation covers messages only
        return page(request, viewer, "not_found.html", 404)
    return viewer


async def _form(request: Request) -> tuple[Viewer, Any] | Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    form = await request.form(max_files=0, max_fields=30, max_part_size=64 * 1024)
    if not csrf_ok(found.csrf, str(form.get("csrf") or "")):
        return render(request, "expired.html", 403, csrf="")
    return found, form


def _label(viewer: Viewer) -> str:
    return actor_label(viewer.actor, viewer.profile)


# ---- the list and the month ------------------------------------------------------------------


@router.get("/agenda")
async def upcoming(request: Request) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    items, prevention = await agenda(request).overview(found.profile)
    return page(request, found, "agenda.html", active="agenda", items=items, prevention=prevention, notice=_notice(request))


@router.get("/agenda/mois")
async def month(request: Request) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    service = agenda(request)
    prefs = await service.prefs(found.profile)
    today = local(datetime.now(UTC), zone(prefs.timezone)).date()
    year, number = today.year, today.month
    wanted = request.query_params.get("mois", "")
    try:
        year, number = (int(part) for part in wanted.split("-"))
        date(year, number, 1)
        if not (today.year - 5 <= year <= today.year + 5):
            raise ValueError
    except (ValueError, OverflowError):  # "2026-99999999999999999999" overflows date()
        year, number = today.year, today.month
    weeks = await service.month(found.profile, year, number)
    previous = f"{year - (number == 1)}-{(number - 2) % 12 + 1:02d}"
    following = f"{year + (number == 12)}-{number % 12 + 1:02d}"
    return page(
        request,
        found,
        "month.html",
        active="agenda",
        weeks=weeks,
        title=french_month(year, number),
        previous=previous,
        following=following,
        previous_title=french_month(*map(int, previous.split("-"))),
        following_title=french_month(*map(int, following.split("-"))),
    )


# ---- one appointment -----------------------------------------------------------------------


def _draft(form: Any) -> Draft:
    return Draft(
        day=str(form.get("date", ""))[:20],
        clock=str(form.get("heure", ""))[:10],
        duration=str(form.get("duree", "30"))[:4],
        title=str(form.get("titre", ""))[:400],
        place=str(form.get("lieu", ""))[:600],
        professional=str(form.get("pro", ""))[:254],
        professional_name=str(form.get("pro_nom_libre", ""))[:400],
        note=str(form.get("note", ""))[:4000],
        secret=form.get("secret") == "oui",
    )


async def _editor(
    request: Request, viewer: Viewer, draft: Draft, *, action: str, status_code: int = 200, error: str | None = None, key: int | None = None
) -> Response:
    """The form, with the annuaire search (GET ?cherche_nom=&cherche_lieu=) and the chosen professional."""
    service = agenda(request)
    name = request.query_params.get("cherche_nom", "")[:100]
    where = request.query_params.get("cherche_lieu", "")[:100]
    chosen = request.query_params.get("pro", "") or draft.professional
    results, search_error = None, None
    if name or where:
        try:
            results = (await service.professionals(name, where)).items
        except SearchError:
            search_error = "Indiquez un nom, une ville ou un code postal."
    professional = await service.professional(chosen)
    minor_self = viewer.profile.relation == "self" and _minor(viewer.profile.account.birth_date)
    return page(
        request,
        viewer,
        "appointment_form.html",
        status_code,
        active="agenda",
        draft=draft,
        action=action,
        error=error,
        key=key,
        search_name=name,
        search_place=where,
        results=results,
        search_error=search_error,
        professional=professional,
        minor_self=minor_self,
    )


def _minor(born: date) -> bool:
    today = date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day)) < 18


@router.get("/agenda/rendez-vous/nouveau")
async def new_form(request: Request) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    return await _editor(request, found, Draft(day=request.query_params.get("date", "")[:10]), action="/agenda/rendez-vous/nouveau")


@router.post("/agenda/rendez-vous/nouveau")
async def create(request: Request) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    draft = _draft(form)
    try:
        key = await agenda(request).add(viewer.profile, _label(viewer), draft)
    except Refused as refused:
        return await _editor(request, viewer, draft, action="/agenda/rendez-vous/nouveau", status_code=400, error=str(refused))
    return redirect(f"/agenda/rendez-vous/{key}?info=ajoute")


@router.get("/agenda/rendez-vous/{key}")
async def show(request: Request, key: RowId) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    service = agenda(request)
    view = await service.appointment(found.profile, key)
    if view is None:
        return page(request, found, "not_found.html", 404)
    option = await service.reply_option(found.profile, view)
    return page(request, found, "appointment.html", active="agenda", view=view, option=option, notice=_notice(request))


@router.post("/agenda/rendez-vous/{key}/reponse")
async def respond(request: Request, key: RowId) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = agenda(request)
    answer = str(form.get("reponse", ""))
    error, done = None, None
    if answer not in ("accepter", "refuser"):
        error = "Choisissez d'accepter ou de refuser."
    else:
        try:
            done = await service.respond(viewer.profile, _label(viewer), key, answer == "accepter")
        except Refused as refused:
            error = str(refused)
    view = await service.appointment(viewer.profile, key)
    if view is None:
        return page(request, viewer, "not_found.html", 404)
    option = await service.reply_option(viewer.profile, view)
    return page(
        request, viewer, "appointment.html", 400 if error else 200, active="agenda", view=view, option=option, error=error, notice=done
    )


@router.get("/agenda/rendez-vous/{key}/modifier")
async def edit_form(request: Request, key: RowId) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    view = await agenda(request).appointment(found.profile, key)
    if view is None or view.row.from_invitation:
        return page(request, found, "not_found.html", 404)
    row = view.row
    minutes = int(((row.ends_at - row.starts_at).total_seconds()) // 60) if row.ends_at else 30
    draft = Draft(
        day=view.starts.date().isoformat(),
        clock="" if row.all_day else f"{view.starts:%H:%M}",
        duration=str(minutes),
        title=row.title,
        place=row.place,
        professional=row.professional_address or "",
        professional_name="" if row.professional_address else row.professional_name,
        note=row.note,
        secret=row.secret,
    )
    return await _editor(request, found, draft, action=f"/agenda/rendez-vous/{key}/modifier", key=key)


@router.post("/agenda/rendez-vous/{key}/modifier")
async def edit(request: Request, key: RowId) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    draft = _draft(form)
    try:
        await agenda(request).edit(viewer.profile, key, draft)
    except Refused as refused:
        return await _editor(
            request, viewer, draft, action=f"/agenda/rendez-vous/{key}/modifier", status_code=400, error=str(refused), key=key
        )
    return redirect(f"/agenda/rendez-vous/{key}?info=modifie")


@router.get("/agenda/rendez-vous/{key}/supprimer")
async def delete_form(request: Request, key: RowId) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    view = await agenda(request).appointment(found.profile, key)
    if view is None:
        return page(request, found, "not_found.html", 404)
    return page(request, found, "appointment_delete.html", active="agenda", view=view)


@router.post("/agenda/rendez-vous/{key}/supprimer")
async def delete(request: Request, key: RowId) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, _form_values = checked
    try:
        await agenda(request).delete(viewer.profile, key)
    except Refused:
        return page(request, viewer, "not_found.html", 404)
    return redirect("/agenda?info=supprime")


@router.get("/agenda/rendez-vous/{key}/rendez-vous.ics")
async def download(request: Request, key: RowId) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    data = await agenda(request).download(found.profile, key)
    if data is None:
        return page(request, found, "not_found.html", 404)
    return Response(
        data,
        media_type="text/calendar; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="rendez-vous.ics"', "Content-Security-Policy": "sandbox; default-src 'none'"},
    )


# ---- prevention --------------------------------------------------------------------------------


@router.get("/agenda/prevention")
async def prevention(request: Request) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    service = agenda(request)
    prefs = await service.prefs(found.profile)
    view = await service.prevention(found.profile, local(datetime.now(UTC), zone(prefs.timezone)).date())
    return page(request, found, "prevention.html", active="agenda", prevention=view, notice=_notice(request))


async def _item_page(
    request: Request, viewer: Viewer, key: str, status_code: int = 200, error: str | None = None, typed: str = ""
) -> Response:
    service = agenda(request)
    prefs = await service.prefs(viewer.profile)
    today = local(datetime.now(UTC), zone(prefs.timezone)).date()
    item = next((i for i in await service.prevention_items(viewer.profile, today) if i.key == key), None)
    if item is None:
        return page(request, viewer, "not_found.html", 404)
    return page(
        request,
        viewer,
        "prevention_item.html",
        status_code,
        active="agenda",
        item=item,
        error=error,
        typed=typed or today.isoformat(),
        today=today.isoformat(),
    )


@router.get("/agenda/prevention/{key}")
async def item(request: Request, key: str) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    return await _item_page(request, found, key[:64])


@router.post("/agenda/prevention/{key}")
async def mark(request: Request, key: str) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = agenda(request)
    action = str(form.get("action", ""))
    typed = str(form.get("date", ""))[:20]
    prefs = await service.prefs(viewer.profile)
    today = local(datetime.now(UTC), zone(prefs.timezone)).date()
    try:
        if action == "annuler":
            await service.unmark(viewer.profile, key[:64])
            return redirect("/agenda/prevention?info=annule")
        if action == "non-concerne":
            await service.mark(viewer.profile, _label(viewer), key[:64], done_on=None, not_applicable=True, today=today)
        else:
            try:
                done_on = date.fromisoformat(typed.strip())
            except ValueError:
                raise Refused("Indiquez la date à laquelle c'était fait (jour, mois, année).") from None
            await service.mark(viewer.profile, _label(viewer), key[:64], done_on=done_on, not_applicable=False, today=today)
    except Refused as refused:
        return await _item_page(request, viewer, key[:64], 400, str(refused), typed)
    return redirect("/agenda/prevention?info=marque")


# ---- reminders and the feed -------------------------------------------------------------------


async def _settings_page(request: Request, viewer: Viewer, status_code: int = 200, **values: Any) -> Response:
    service = agenda(request)
    prefs = values.pop("prefs", None) or await service.prefs(viewer.profile)
    since = await service.feed_since(viewer.profile, viewer.actor.id)
    return page(
        request,
        viewer,
        "settings.html",
        status_code,
        active="agenda",
        prefs=prefs,
        leads=LEADS,
        zones=ZONES,
        feed_since=french_day(since.date()) if since else None,
        notice=values.pop("notice", _notice(request)),
        **values,
    )


@router.get("/agenda/reglages")
async def settings_page(request: Request) -> Response:
    found = await _viewer(request)
    if isinstance(found, Response):
        return found
    return await _settings_page(request, found)


@router.post("/agenda/reglages")
async def save_settings(request: Request) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    try:
        lead, hour = int(str(form.get("quand", "1"))), int(str(form.get("heure", "9")))
    except ValueError:
        lead, hour = -1, -1
    where = str(form.get("fuseau", ""))
    wanted = Prefs(form.get("rappels") == "oui", lead, hour, where)
    if lead not in LEADS or not 6 <= hour <= 21 or where not in ZONES:
        return await _settings_page(
            request, viewer, 400, prefs=wanted, error="Choisissez quand recevoir les rappels parmi les propositions."
        )
    await agenda(request).save_prefs(viewer.profile, wanted)
    return redirect("/agenda/reglages?info=reglages")


@router.post("/agenda/abonnement")
async def subscription(request: Request) -> Response:
    checked = await _form(request)
    if isinstance(checked, Response):
        return checked
    viewer, form = checked
    service = agenda(request)
    if form.get("action") == "revoquer":
        await service.revoke_feed(viewer.profile, viewer.actor.id)
        return redirect("/agenda/reglages?info=revoque")
    token = await service.new_feed(viewer.profile, viewer.actor.id)
    base = str(request.base_url).rstrip("/")
    url = f"{base}/agenda/flux/{token}.ics"
    webcal = "webcal://" + url.split("://", 1)[1]
    notice = "Voici votre nouvelle adresse d'abonnement. Notez-la maintenant : elle ne sera plus affichée. Toute adresse précédente ne fonctionne plus."
    return await _settings_page(request, viewer, feed_url=url, webcal_url=webcal, notice=notice)


@router.get("/agenda/flux/{name}")
async def feed(request: Request, name: str) -> Response:
    """The subscribed calendar: no session, the token is the secret (never logged here)."""
    token = name.removesuffix(".ics")
    data = await agenda(request).feed(token)
    if data is None:
        return Response("Agenda introuvable.\n", status_code=404, media_type="text/plain; charset=utf-8")
    return Response(data, media_type="text/calendar; charset=utf-8", headers={"Content-Disposition": 'inline; filename="agenda-sante.ics"'})
