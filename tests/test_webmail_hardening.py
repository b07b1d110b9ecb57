"""Issue 18, points 3, 4, 7 and 9, through real clients (httpx on a loopback socket), on
both databases: each test is a table of hostile inputs wider than the attack's example.

- the login lock-out keys on the canonical account, whatever form of it was typed;
- /activation gives one answer for every failure, and is throttled;
- an id out of range in a URL is a 404 on every route that takes one;
- error pages (404, 413, 500) carry the security headers, are French, and validation
  errors never echo what was submitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
from conftest import RunningGateway, RunningHTTP
from test_gateway_rules import doctor_writes
from test_webmail import Webmail, conversation_id
from webmail_client import form_token

SECURITY_HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


def assert_safe_headers(response: httpx.Response) -> None:
    for name, expected in SECURITY_HEADERS.items():
        assert expected in response.headers.get(name, ""), (response.status_code, name, dict(response.headers))


@pytest.fixture
async def webmail(engine, settings, tmp_path: Path) -> AsyncIterator[Webmail]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.5, webmail_max_upload=1024 * 1024)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield Webmail(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


def codes_sent(outbox: Path) -> int:
    return len(list(outbox.glob("*.eml"))) if outbox.exists() else 0


# ---- point 3: the lock-out keys on the account, not on what was typed ---------------------------


def spellings(ins: str, email: str) -> list[str]:
    """Ways a person (or an attacker) may write the same account."""
    spaced = f"{ins[0]} {ins[1:3]} {ins[3:5]} {ins[5:7]} {ins[7:10]} {ins[10:13]} {ins[13:]}"
    return [
        ins,
        spaced,
        ins.replace("A", "a").replace("B", "b"),
        ".".join(spaced.split()),
        "-".join(spaced.split()),
        f"  {ins}\t",
        email.upper(),
        f" {email} ",
        email.capitalize(),
        "\u00a0".join(spaced.split()),  # non-breaking spaces, as a word processor pastes them
    ]


@pytest.mark.parametrize("who", ["adult_1", "adult_2"])
async def test_lockout_holds_whatever_spelling_of_the_account(webmail: Webmail, who: str) -> None:
    patient = webmail.patient(who)
    variants = spellings(patient["ins"], patient["email"])
    async with webmail.client() as client:
        for variant in variants[:5]:
            wrong = await client.post("/api/v1/session/login", json={"identifier": variant, "password": "pas-le-bon-1"})
            assert wrong.status_code == 401, (variant, wrong.text)
        before = codes_sent(webmail.outbox)
        for variant in variants[5:]:  # the right password, under every other spelling: still locked, no code sent
            locked = await client.post("/api/v1/session/login", json={"identifier": variant, "password": patient["password"]})
            assert locked.status_code == 429 and "Trop d'essais" in locked.json()["detail"], (variant, locked.text)
        csrf = form_token((await client.get("/connexion")).text)
        page = await client.post("/connexion", data={"csrf": csrf, "identifiant": variants[1], "mot_de_passe": patient["password"]})
        assert page.status_code == 429 and "Trop d&#39;essais" in page.text
    assert codes_sent(webmail.outbox) == before


async def test_unknown_identifiers_are_locked_out_by_their_canonical_form(webmail: Webmail) -> None:
    """An attacker probing one unknown account under many spellings meets the same lock as
    for a known one (otherwise the lock itself would tell which accounts exist)."""
    unknown = spellings("285037512345688".replace("88", "61"), "personne@example.org")
    async with webmail.client() as client:
        answers = [
            await client.post("/api/v1/session/login", json={"identifier": variant, "password": "x" * 12})
            for variant in [*unknown[:6], unknown[9]]  # the INS spellings (an unknown email is another unknown name)
        ]
    statuses = [answer.status_code for answer in answers]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses


async def test_forwarded_headers_are_ignored_unless_from_a_configured_proxy(webmail: Webmail, engine, settings) -> None:  # type: ignore[no-untyped-def]
    """Without `trusted_proxies`, X-Forwarded-For chooses nothing: twenty failures from one
    socket address lock that address, whatever each request claimed to come from."""
    async with webmail.client() as client:
        for n in range(20):
            answer = await client.post(
                "/api/v1/session/login",
                json={"identifier": f"inconnu{n}@example.org", "password": "x" * 12},
                headers={"X-Forwarded-For": f"203.0.113.{n}", "X-Real-IP": f"198.51.100.{n}", "Forwarded": f"for=192.0.2.{n}"},
            )
            assert answer.status_code == 401, (n, answer.text)
        locked = await client.post(
            "/api/v1/session/login",
            json={"identifier": "encore-un@example.org", "password": "x" * 12},
            headers={"X-Forwarded-For": "203.0.113.200"},
        )
        assert locked.status_code == 429


async def test_a_configured_proxy_is_believed_and_only_it(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Behind a trusted proxy (here: loopback), each forwarded client has its own counter,
    and a forged entry at the left of the chain changes nothing."""
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, trusted_proxies=["127.0.0.0/8"])
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        async with httpx.AsyncClient(base_url=http.base_url, timeout=30) as client:
            for n in range(20):  # twenty failures, each for another forwarded client: none is locked
                answer = await client.post(
                    "/api/v1/session/login",
                    json={"identifier": f"inconnu{n}@example.org", "password": "x" * 12},
                    headers={"X-Forwarded-For": f"203.0.113.{n}"},
                )
                assert answer.status_code == 401
            for n in range(20):  # one real client behind the proxy, forging the left of the chain each time
                answer = await client.post(
                    "/api/v1/session/login",
                    json={"identifier": f"autre{n}@example.org", "password": "x" * 12},
                    headers={"X-Forwarded-For": f"10.9.9.{n}, 198.51.100.7"},
                )
                assert answer.status_code == 401
            locked = await client.post(
                "/api/v1/session/login",
                json={"identifier": "dernier@example.org", "password": "x" * 12},
                headers={"X-Forwarded-For": "10.0.0.1, 198.51.100.7"},
            )
            assert locked.status_code == 429
    finally:
        await http.stop()
        await gateway.stop()


# ---- point 4: no account enumeration on /activation ------------------------------------------------


async def test_activation_says_the_same_for_every_failure(webmail: Webmail) -> None:
    waiting = webmail.patient("not_activated")
    claire = webmail.patient("adult_1")
    cases = {
        "unknown INS": ("285037512345661", "12345678"),
        "INS with a wrong key": ("285037512345689", "12345678"),
        "activated profile": (claire["ins"], "12345678"),
        "activated profile, spaced": (" ".join(claire["ins"]), "12345678"),
        "email instead of INS": (claire["email"], "12345678"),
        "created profile, wrong code": (waiting["ins"], "00000000"),
        "created profile, short code": (waiting["ins"], "1"),
        "empty": ("", ""),
        "garbage": ("'; DROP TABLE patients; --", "abcdefgh"),
    }
    async with webmail.client() as client:
        csrf = form_token((await client.get("/activation")).text)
        answers = {}
        for name, (ins, code) in cases.items():
            for action in ("activer", "opposer"):
                answer = await client.post(
                    "/activation",
                    data={
                        "csrf": csrf,
                        "ins": ins,
                        "code": code,
                        "email": "x@example.org",
                        "mot_de_passe": "bonjour-2026",
                        "confirmation": "bonjour-2026",
                        "action": action,
                    },
                )
                main = answer.text[answer.text.find("<main") :]
                error = main[main.find('role="alert"') :][:400]
                answers[(name, action)] = (answer.status_code, error)
    distinct = set(answers.values())
    assert len(distinct) == 1, answers
    status, error = distinct.pop()
    assert status == 400 and "activé" not in error and "fermé" not in error


async def test_activation_is_throttled_per_ins_and_per_address(webmail: Webmail) -> None:
    waiting = webmail.patient("not_activated")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/activation")).text)

        async def attempt(ins: str, code: str) -> httpx.Response:
            return await client.post("/activation", data={"csrf": csrf, "ins": ins, "code": code, "action": "opposer"})

        for n in range(5):
            await attempt(" ".join(waiting["ins"]) if n % 2 else waiting["ins"], f"{n:08d}")
        blocked = await attempt(waiting["ins"], waiting["activation_code"])  # even the right code, now
        assert blocked.status_code == 429 and "Trop d&#39;essais" in blocked.text
        unknown = [f"2850375123456{n:02d}" for n in range(10, 30)]
        answers = [(await attempt(ins, "12345678")).status_code for ins in unknown]
        assert answers[-1] == 429, answers  # the address is locked too, whatever INS it tries
    from sqlalchemy import text

    async with webmail.gateway.engine.connect() as conn:  # the profile is still waiting: nothing was opposed
        status = (await conn.execute(text("SELECT status FROM patients WHERE ins = :ins"), {"ins": waiting["ins"]})).scalar_one()
    assert status == "created"


# ---- point 7: ids out of range are a 404, on every route that takes one -----------------------------

HOSTILE_IDS = [
    "99999999999999999999",
    str(2**63),
    str(2**63 - 1),
    str(-(2**63)),
    str(2**31),
    str(2**64 + 1),
    "0",
    "-0",
    "00000000000000000000000000001",
    "1e3",
    "0x10",
    "abc",
    "%EF%BC%91",  # a full-width digit one: int() would take it
    "%D9%A1",  # an Arabic-Indic digit one
    "1%20",
    "+1",
    "1_000",
]


def id_routes(key: str, other: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/conversations/{key}"),
        ("POST", f"/conversations/{key}/reponse"),
        ("POST", f"/conversations/{key}/archiver"),
        ("POST", f"/conversations/{key}/supprimer"),
        ("GET", f"/conversations/{key}/imprimer"),
        ("GET", f"/conversations/{key}/messages/{other}/pieces/0"),
        ("GET", f"/conversations/{other}/messages/{key}/pieces/0"),
        ("GET", f"/conversations/{other}/messages/1/pieces/{key}"),
        ("GET", f"/api/v1/conversations/{key}"),
        ("POST", f"/api/v1/conversations/{key}/replies"),
        ("POST", f"/api/v1/conversations/{key}/archive"),
        ("DELETE", f"/api/v1/conversations/{key}"),
        ("GET", f"/api/v1/conversations/{key}/messages/{other}/attachments/0"),
        ("GET", f"/api/v1/conversations/{other}/messages/{key}/attachments/0"),
        ("GET", f"/api/v1/conversations/{other}/messages/1/attachments/{key}"),
    ]


async def test_out_of_range_ids_are_not_found_everywhere(webmail: Webmail) -> None:
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        real = str(await conversation_id(client))
        failures = []
        for hostile in HOSTILE_IDS:
            for method, path in id_routes(hostile, real):
                answer = await client.request(
                    method,
                    path,
                    data={"csrf": csrf, "texte": "x", "text": "x"} if method == "POST" else None,
                    headers={"X-CSRF-Token": csrf},
                )
                if answer.status_code != 404:
                    failures.append((method, path, answer.status_code))
                elif not path.startswith("/api/"):
                    assert "Cette page n'existe pas" in answer.text and answer.headers["content-type"].startswith("text/html")
        for body in ({"patient_id": 2**63}, {"patient_id": 99999999999999999999}, {"patient_id": -1}, {"patient_id": 0}):
            answer = await client.put("/api/v1/me/profile", json=body, headers={"X-CSRF-Token": csrf})
            if answer.status_code != 404:
                failures.append(("PUT", f"/api/v1/me/profile {body}", answer.status_code))
        for value in ("99999999999999999999", "-1", "abc"):
            answer = await client.post("/profils", data={"csrf": csrf, "profil": value})
            if answer.status_code not in (303, 404):
                failures.append(("POST", f"/profils {value}", answer.status_code))
        assert not failures, failures
        assert (await client.get(f"/conversations/{real}")).status_code == 200  # the real one still opens


def _id_routes_of(app) -> list[tuple[str, str, list[str]]]:  # type: ignore[no-untyped-def]
    """(method, path template, its integer parameters) of every route the app serves."""
    found = []
    for entry in app.routes:
        candidates = entry.effective_candidates() if hasattr(entry, "effective_candidates") else [entry]
        for candidate in candidates:
            route = getattr(candidate, "route", candidate)
            dependant = getattr(route, "dependant", None)
            if dependant is None:
                continue
            names = [p.name for p in dependant.path_params if p.field_info.annotation is int]
            for method in sorted(route.methods or ()):
                if names and method != "HEAD":
                    found.append((method, route.path, names))
    return found


async def test_every_route_that_takes_an_id_answers_404_to_one_no_row_has(webmail: Webmail) -> None:
    """The class behind the hand-written list above: found from the app itself, so a route
    added tomorrow is covered. Ids out of range or not numbers name nothing: 404 (or the
    refusal of a caller who may not be there at all), never a 500, a 422 or a 400."""
    routes = _id_routes_of(webmail.http.app)
    assert len(routes) >= 15, routes  # the agenda's, the dossier's, the campaigns' at least
    client, csrf = await webmail.logged_in()
    failures = []
    async with aclosing(client):
        for method, template, names in routes:
            for hostile in ("99999999999999999999", str(2**63), str(-(2**63)), "0", "-1", "abc", "%EF%BC%91"):
                path = template
                for name in names:
                    path = path.replace("{" + name + "}", hostile)
                answer = await client.request(
                    method, path, data={"csrf": csrf} if method == "POST" else None, headers={"X-CSRF-Token": csrf}
                )
                if answer.status_code not in (401, 403, 404):
                    failures.append((method, path, answer.status_code))
    assert not failures, failures


# ---- point 9: error pages keep the security headers, speak French, echo nothing ---------------------


async def test_unknown_pages_are_french_and_safe(webmail: Webmail) -> None:
    async with webmail.client() as client:
        for path in ("/nulle-part", "/static/../../etc/passwd", "/conversations", "/api/v1/nulle-part"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert_safe_headers(answer)
            assert "Not Found" not in answer.text, path
        wrong_method = await client.delete("/connexion")
        assert wrong_method.status_code == 405 and "Method Not Allowed" not in wrong_method.text
        assert_safe_headers(wrong_method)


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"0" * min(size, total - sent)
        sent += size


@pytest.mark.parametrize("path", ["/conversations/{key}/reponse", "/api/v1/conversations/{key}/replies", "/ordonnance/envoi"])
async def test_an_oversized_upload_gets_the_same_413_page_declared_or_chunked(webmail: Webmail, path: str) -> None:
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        url = path.format(key=await conversation_id(client))
        boundary = "xYzZY"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{csrf}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="piece"; filename="gros.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n%PDF-"
        ).encode()
        size = 3 * 1024 * 1024
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "X-CSRF-Token": csrf}

        def parts() -> Iterator[bytes]:
            yield head
            yield from chunks(size)
            yield f"\r\n--{boundary}--\r\n".encode()

        async def chunked() -> AsyncIterator[bytes]:
            for part in parts():
                yield part

        declared = await client.post(url, content=b"".join(parts()), headers=headers)
        streamed = await client.post(url, content=chunked(), headers=headers)
        assert "content-length" not in streamed.request.headers and streamed.request.headers["transfer-encoding"] == "chunked"
        for answer in (declared, streamed):
            assert answer.status_code == 413, (answer.status_code, answer.text[:300])
            assert "trop lourd" in answer.text and "Rien n'a été envoyé" in answer.text
            assert answer.headers["content-type"].startswith("text/html")
            assert_safe_headers(answer)
        assert declared.text == streamed.text
        assert (await client.get("/")).status_code == 200  # and the session goes on
    assert [raw for raw in await webmail.gateway.inbox(webmail.gateway.account("doctor")[0]) if b"gros.pdf" in raw] == []


MALFORMED_FORMS = {
    "no boundary": ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n'),
    "too many fields": ("application/x-www-form-urlencoded", b"&".join(b"f%d=1" % n for n in range(1200))),
    "too many files": (
        "multipart/form-data; boundary=b",
        b"".join(b'--b\r\nContent-Disposition: form-data; name="f"; filename="%d.txt"\r\n\r\nx\r\n' % n for n in range(1100))
        + b"--b--\r\n",
    ),
    "a part without a name": ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FORMS))
async def test_a_form_the_framework_cannot_read_gets_a_french_page(webmail: Webmail, case: str) -> None:
    """Starlette's parser says why in English (and FastAPI "There was an error parsing the
    body"): the page and the API say it in French, with the same headers, and the session goes on."""
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, csrf = await webmail.logged_in()
    content_type, body = MALFORMED_FORMS[case]
    async with aclosing(client):
        key = await conversation_id(client)
        for url in (f"/conversations/{key}/reponse", f"/api/v1/conversations/{key}/replies"):
            answer = await client.post(url, content=body, headers={"Content-Type": content_type, "X-CSRF-Token": csrf})
            assert answer.status_code in (400, 403, 422), (case, url, answer.status_code, answer.text[:300])
            assert_safe_headers(answer)
            for english in ("Too many", "Missing boundary", "error parsing", "Maximum number"):
                assert english not in answer.text, (case, url, answer.text[:300])
        assert (await client.get("/")).status_code == 200


async def test_a_failure_nobody_foresaw_is_a_french_page_with_the_same_headers(webmail: Webmail) -> None:
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, _ = await webmail.logged_in()
    async with aclosing(client):
        service = webmail.http.server.config.app.state.webmail.webmail  # type: ignore[attr-defined]

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("secret detail: connection to 10.0.0.5 lost")

        real_inbox = service.inbox
        service.inbox = broken
        try:
            page = await client.get("/")
            api = await client.get("/api/v1/conversations")
        finally:
            service.inbox = real_inbox
        assert page.status_code == 500 and "momentanément indisponible" in page.text and "secret detail" not in page.text
        assert api.status_code == 500 and "momentanément indisponible" in api.json()["detail"] and "secret" not in api.text
        for answer in (page, api):
            assert_safe_headers(answer)


SECRET = "Mon-Secret-Tres-Personnel-42"


async def test_validation_errors_never_echo_what_was_typed(webmail: Webmail) -> None:
    bodies = [
        {"identifier": "x" * 300, "password": SECRET},  # identifier too long
        {"password": SECRET},  # identifier missing
        {"identifier": 123, "password": SECRET},  # wrong type
        {"identifier": ["a"], "password": SECRET},
        {"identifier": "a", "password": SECRET * 50},  # password too long
        {"identifier": "a", "password": [SECRET]},
        {"identifier": "a", "password": {"nested": SECRET}},
        {"identifier": None, "password": SECRET},
    ]
    async with webmail.client() as client:
        for body in bodies:
            answer = await client.post("/api/v1/session/login", json=body)
            assert answer.status_code == 422, body
            assert SECRET not in answer.text and "Mon-Secret" not in answer.text, answer.text
            assert "input" not in answer.json().get("detail", [{}])[0] if isinstance(answer.json().get("detail"), list) else True
            assert_safe_headers(answer)
        raw = await client.post(
            "/api/v1/session/login",
            content=f'{{"identifier": "a", "password": "{SECRET}"'.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert raw.status_code == 422 and SECRET not in raw.text
        code = await client.post("/api/v1/session/code", json={"code": SECRET * 3})
        assert code.status_code == 422 and SECRET not in code.text
    await doctor_writes(webmail.gateway, webmail.patient("adult_1")["address"], "Résultats")
    client, csrf = await webmail.logged_in()
    async with aclosing(client):
        key = await conversation_id(client)
        long_reply = await client.post(f"/api/v1/conversations/{key}/replies", data={"text": SECRET * 2000}, headers={"X-CSRF-Token": csrf})
        assert long_reply.status_code == 422 and SECRET not in long_reply.text
        for path, body in (
            ("/compte/mot-de-passe", {"csrf": csrf, "actuel": SECRET, "nouveau": "court", "confirmation": "court"}),
            ("/compte/mot-de-passe", {"csrf": csrf, "actuel": "faux-mot-2", "nouveau": SECRET, "confirmation": SECRET + "x"}),
            ("/compte/email", {"csrf": csrf, "email": "pas-une-adresse", "mot_de_passe": SECRET}),
            ("/compte/fermer", {"csrf": csrf, "confirmer": "oui", "mot_de_passe": SECRET}),
        ):
            answer = await client.post(path, data=body)
            assert answer.status_code == 400 and SECRET not in answer.text, (path, answer.status_code)
    async with webmail.client() as client:
        csrf = form_token((await client.get("/activation")).text)
        answer = await client.post(
            "/activation", data={"csrf": csrf, "ins": "x", "code": "1", "mot_de_passe": SECRET, "confirmation": SECRET}
        )
        assert SECRET not in answer.text
        csrf = form_token((await client.get("/connexion")).text)
        answer = await client.post("/connexion", data={"csrf": csrf, "identifiant": "a", "mot_de_passe": SECRET})
        assert answer.status_code == 400 and SECRET not in answer.text


async def test_a_nul_character_is_refused_alike_on_both_databases(webmail: Webmail) -> None:
    """PostgreSQL cannot store a NUL in text, SQLite can: the same input answered 500 on one
    and 200 on the other. It is refused at the door, with the same 400 on both."""
    client, csrf = await webmail.logged_in()
    probes = [
        ("GET", "/api/v1/annuaire/search?name=bernard%00", None, None),
        ("GET", "/api/v1/annuaire/search?place=%00", None, None),
        ("GET", "/ordonnance?nom=pharm%00", None, None),
        ("GET", "/api/v1/pharmacies?name=pharm%00", None, None),
        ("POST", "/compte/email", {"csrf": csrf, "email": "a\x00b@example.org"}, None),
        ("POST", "/mot-de-passe-oublie", {"csrf": csrf, "identifiant": "a\x00@example.org"}, None),
        ("POST", "/api/v1/session", None, {"identifier": "a\u0000@example.org", "password": "x"}),
    ]
    async with aclosing(client):
        answers = []
        for method, path, form, body in probes:
            answer = await client.request(method, path, data=form, json=body, headers={"X-CSRF-Token": csrf})
            answers.append((path, answer.status_code))
        assert all(code == 400 for _, code in answers), answers
        assert (await client.get("/api/v1/annuaire/search?name=bernard")).status_code == 200  # the same without the NUL
