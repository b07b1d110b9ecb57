"""CNAM campaigns end to end, over HTTP on real sockets, on both databases: a signed target
file to the patients' inboxes, criteria, the rules as sets, refused files, progress, recall,
the API token and its audit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest
from conftest import RunningGateway, RunningHTTP
from openpgp_helpers import FakeCnam, copy_template, tamper
from sqlalchemy import text

from caducee.annuaire.population import PlainSource, import_population
from caducee.annuaire.synthetic_population import population_lines, synthetic_ins
from caducee.campaigns.deliveries import Deliveries

PATIENTS = 2500


@dataclass
class World:
    gateway: RunningGateway
    http: RunningHTTP
    cnam: FakeCnam
    other: FakeCnam
    token: str
    population: list[str]  # the INS of the imported population, in file order
    tmp: Path

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http.base_url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=60)

    async def open_every_inbox(self) -> int:
        """What the webmail does for each patient who opens it: the campaigns filed (entries made)."""
        async with self.gateway.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT p.id, m.id FROM patients p JOIN mailboxes m ON m.patient_id = p.id"))).all()
        return await Deliveries(self.gateway.engine).materialise([(int(p), int(m)) for p, m in rows])


@pytest.fixture
async def world(engine, settings, tmp_path: Path, openpgp_template: Path, smime_template: Path) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.2)
    cnam, other = copy_template(openpgp_template, settings.data_dir, tmp_path)
    gateway = await RunningGateway(engine, settings, tmp_path, smime_template).start(smime=True)
    lines = list(population_lines(PATIENTS, opposed_every=40, closed_every=60))
    path = tmp_path / "population.txt"
    path.write_text("".join(lines), encoding="utf-8")
    async with engine.begin() as conn:
        await import_population(conn, PlainSource(path), patient_domain=settings.patient_domain)
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield World(gateway, http, cnam, other, gateway.credentials["cnam"]["api_token"], [line[:15] for line in lines[1:]], tmp_path)
    finally:
        await http.stop()
        await gateway.stop()


async def inbox_counts(engine, message_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(entries of the message, distinct mailboxes holding it)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT f.mailbox_id) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id "
                    "WHERE e.message_id = :m AND e.expunged_modseq IS NULL"
                ),
                {"m": message_id},
            )
        ).one()
    return int(row[0]), int(row[1])


async def scalar(engine, sql: str, **params: object) -> object:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


def target_file(world: World, name: str, ins: list[str]) -> bytes:
    return ("INS\n" + "".join(f"{value}\n" for value in ins)).encode()


async def test_a_signed_target_file_reaches_the_patients_inboxes(world: World) -> None:
    engine = world.gateway.engine
    claire = world.gateway.credentials["patients"]["adult_1"]
    chosen = world.population[:1200] + [claire["ins"]]
    wrong_key = chosen[5][:13] + f"{(int(chosen[5][13:]) + 1) % 97:02d}"
    unknown = synthetic_ins(90_000_000, 1, 1980)  # a valid INS nobody here has
    lines = chosen[:100] + ["123", wrong_key, unknown] + chosen[100:] + [chosen[0], chosen[1]]
    sealed = world.cnam.seal(target_file(world, "t", lines), world.tmp / "cible.gpg")
    pdf = b"%PDF-1.4\n% colorectal kit\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
    async with aclosing(world.client()) as client:
        created = await client.post(
            "/api/v1/campaigns",
            data={
                "subject": "Votre kit de dépistage du cancer colorectal",
                "body": "Commandez-le sur https://monkit.depistage-colorectal.fr",
                "reference": "CCR-2026",
            },
            files={"targets": ("cible.gpg", sealed.read_bytes(), "application/octet-stream"), "pdf": ("kit.pdf", pdf, "application/pdf")},
        )
        assert created.status_code == 200, created.text
        answer = created.json()
        campaign = answer["id"]
        assert answer["file"] == {"rows": len(lines), "problems": {"invalid": 2, "unknown": 1, "duplicate": 2}}
        problems = (await client.get(f"/api/v1/campaigns/{campaign}/problems")).json()
        assert [(p["line"], p["problem"]) for p in problems] == [
            (102, "invalid"),
            (103, "invalid"),
            (104, "unknown"),
            (len(lines), "duplicate"),
            (len(lines) + 1, "duplicate"),
        ]
        estimate = answer["estimate"]
        statuses = await _statuses(engine, chosen)
        assert estimate["skipped"] == {"unknown": 1, **{s: n for s, n in statuses.items() if s in {"opposed", "closed"}}}
        assert estimate["receiving"] == statuses.get("created", 0) + statuses.get("activated", 0)
        assert (await client.post("/api/v1/campaigns/estimate", json={"campaign_id": campaign})).json() == estimate

        started = await client.post(f"/api/v1/campaigns/{campaign}/start")
        assert started.json()["state"] == "sent", started.text
        progress = (await client.get(f"/api/v1/campaigns/{campaign}")).json()
        assert await world.open_every_inbox() == estimate["receiving"]
    assert progress["state"] == "sent" and progress["delivered"] == estimate["receiving"] and progress["read"] == 0
    assert set(progress) == {
        "id",
        "reference",
        "state",
        "send_at",
        "targeted",
        "delivered",
        "skipped",
        "read",
        "recalled",
        "read_before_recall",
        "file",
    }
    message_id = int(await scalar(engine, "SELECT message_id FROM campaigns WHERE id = :c", c=campaign))  # type: ignore[arg-type]
    assert await inbox_counts(engine, message_id) == (estimate["receiving"], estimate["receiving"])
    # store once: one body, one conversation, one participant, whatever the number of patients
    assert await scalar(engine, "SELECT count(*) FROM messages WHERE id >= :m", m=message_id) == 1
    assert (
        await scalar(
            engine, "SELECT count(*) FROM conversation_participants p JOIN conversations c ON c.id = p.conversation_id WHERE c.is_campaign"
        )
        == 1
    )
    opposed = await scalar(
        engine,
        "SELECT count(*) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id JOIN mailboxes m ON m.id = f.mailbox_id "
        "JOIN patients p ON p.id = m.patient_id WHERE e.message_id = :m AND p.status IN ('opposed', 'closed')",
        m=message_id,
    )
    assert opposed == 0
    created_ones = await scalar(
        engine,
        "SELECT count(*) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id JOIN mailboxes m ON m.id = f.mailbox_id "
        "JOIN patients p ON p.id = m.patient_id WHERE e.message_id = :m AND p.status = 'created'",
        m=message_id,
    )
    assert created_ones == statuses.get("created", 0) > 0  # created profiles get it, and see it at activation
    # signed once with the CNAM mailbox's certificate; no "a message is waiting" email for anyone
    body = world.gateway.cipher.open(await scalar(engine, "SELECT body FROM messages WHERE id = :m", m=message_id))  # type: ignore[arg-type]
    assert b"application/pkcs7-signature" in body or b"signed-data" in body
    outbox = world.gateway.settings.data_dir / "outbox"
    assert not any("attend" in p.read_text(errors="replace") for p in outbox.glob("*.eml")) if outbox.exists() else True
    audited = await scalar(engine, "SELECT count(*) FROM campaign_audit WHERE campaign_id = :c AND status = 200", c=campaign)
    assert audited == 5  # create, problems, estimate, start, progress


async def _statuses(engine, ins: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        counts: dict[str, int] = {}
        for start in range(0, len(ins), 500):
            rows = await conn.execute(
                text("SELECT status, count(*) FROM patients WHERE ins IN :ins GROUP BY status").bindparams(
                    __import__("sqlalchemy").bindparam("ins", expanding=True)
                ),
                {"ins": ins[start : start + 500]},
            )
            for status, count in rows:
                counts[status] = counts.get(status, 0) + int(count)
    return counts


@pytest.mark.parametrize("how", ["unsigned", "other signer", "tampered", "not encrypted"])
async def test_a_bad_target_file_is_refused_and_nothing_is_sent(world: World, how: str) -> None:
    engine = world.gateway.engine
    plain = target_file(world, "t", world.population[:300])
    if how == "unsigned":
        data = world.cnam.seal(plain, world.tmp / "f.gpg", sign=False).read_bytes()
    elif how == "other signer":
        data = world.other.seal(plain, world.tmp / "f.gpg").read_bytes()
    elif how == "tampered":
        data = tamper(world.cnam.seal(plain * 20, world.tmp / "f.gpg")).read_bytes()
    else:
        data = plain
    messages = await scalar(engine, "SELECT count(*) FROM messages")
    async with aclosing(world.client()) as client:
        answer = await client.post("/api/v1/campaigns", data={"subject": "S", "body": "B"}, files={"targets": ("f.gpg", data)})
    assert answer.status_code == 422, answer.text
    assert await scalar(engine, "SELECT count(*) FROM campaigns") == 0
    assert await scalar(engine, "SELECT count(*) FROM campaign_targets") == 0
    assert await scalar(engine, "SELECT count(*) FROM messages") == messages
    assert await scalar(engine, "SELECT count(*) FROM campaign_audit WHERE status = 422") == 1


async def test_criteria_recall_and_read_counts(world: World) -> None:
    engine = world.gateway.engine
    async with aclosing(world.client()) as client:
        women = {"sex": "F", "age_min": 50, "age_max": 74, "age_on": "2026-06-01"}
        estimate = (await client.post("/api/v1/campaigns/estimate", json={"criteria": women})).json()
        expected = await scalar(
            engine,
            "SELECT count(*) FROM patients WHERE sex = 'F' AND birth_date > :lo AND birth_date <= :hi AND status IN ('created', 'activated')",
            lo=date(1951, 6, 1),
            hi=date(1976, 6, 1),
        )
        assert estimate["receiving"] == expected > 0
        made = (
            await client.post(
                "/api/v1/campaigns",
                data={"subject": "Mammographie", "body": "Prenez rendez-vous.", "criteria": __import__("json").dumps(women)},
            )
        ).json()
        assert (await client.post(f"/api/v1/campaigns/{made['id']}/start")).json()["state"] == "sent"
        await world.open_every_inbox()
        message_id = int(await scalar(engine, "SELECT message_id FROM campaigns WHERE id = :c", c=made["id"]))  # type: ignore[arg-type]
        # three patients read it
        await _read_some(engine, message_id, 3)
        assert (await client.get(f"/api/v1/campaigns/{made['id']}")).json()["read"] == 3
        recalled = (await client.post(f"/api/v1/campaigns/{made['id']}/recall")).json()
    assert recalled["state"] == "recalled" and recalled["recalled"] == expected - 3 and recalled["read_before_recall"] == 3
    assert await inbox_counts(engine, message_id) == (3, 3)  # gone wherever it was unread


async def _read_some(engine, message_id: int, count: int) -> None:  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        ids = [
            r[0]
            for r in await conn.execute(
                text("SELECT id FROM mailbox_entries WHERE message_id = :m ORDER BY id LIMIT :n"), {"m": message_id, "n": count}
            )
        ]
        for entry in ids:
            await conn.execute(text("UPDATE mailbox_entries SET flags = '$Prevention \\Seen' WHERE id = :id"), {"id": entry})


async def test_the_token_is_hashed_rotatable_and_every_call_audited(world: World) -> None:
    from caducee.campaigns import tokens

    engine = world.gateway.engine
    stored = await scalar(engine, "SELECT token_sha256 FROM campaign_api_tokens WHERE revoked_at IS NULL")
    assert stored == tokens.digest(world.token) and world.token not in str(stored)
    async with aclosing(world.client("wrong")) as client:
        assert (await client.get("/api/v1/campaigns")).status_code == 401
    async with engine.begin() as conn:
        fresh = await tokens.rotate(conn, world.gateway.credentials["cnam"]["address"])
    async with aclosing(world.client()) as client:
        assert (await client.get("/api/v1/campaigns")).status_code == 401  # the old one is revoked
    async with aclosing(world.client(fresh)) as client:
        assert (await client.get("/api/v1/campaigns")).status_code == 200
    rows = await scalar(engine, "SELECT count(*) FROM campaign_audit")
    refused = await scalar(engine, "SELECT count(*) FROM campaign_audit WHERE status = 401")
    assert rows == 3 and refused == 2
