"""Campaigns without HTTP: population import, targeting by the rules as sets, fan-out, recall."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from caducee.annuaire.population import PlainSource, import_population
from caducee.annuaire.synthetic_population import write_population
from caducee.annuaire.targets import Criteria
from caducee.campaigns.runner import Runner
from caducee.campaigns.service import Campaigns

PATIENTS = 3000


async def populate(engine, settings, tmp_path: Path, rows: int = PATIENTS):  # type: ignore[no-untyped-def]
    path = write_population(tmp_path / "population.txt", rows, opposed_every=50, closed_every=70)
    async with engine.begin() as conn:
        return await import_population(conn, PlainSource(path), patient_domain=settings.patient_domain)


async def test_a_campaign_reaches_every_patient_the_rules_allow_once(gateway, engine, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = await populate(engine, settings, tmp_path)
    assert report.inserted == PATIENTS
    cnam = gateway.credentials["cnam"]["address"]
    service = Campaigns(engine, settings.replace(campaign_batch_size=500), gateway.pipeline)
    campaign_id, _ = await service.create(cnam, subject="Dépistage", body="Faites le test : https://www.ameli.fr", criteria=Criteria())
    estimate = await service.estimate(cnam, Criteria(), campaign_id)
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(text("SELECT status, count(*) FROM patients GROUP BY status"))).all())
    assert estimate.skipped == {"opposed": statuses["opposed"], "closed": statuses["closed"]}
    assert await service.start(campaign_id) == "running"
    runner = Runner(engine, service)
    filed = await runner.work()
    assert filed == estimate.receiving
    progress = await service.progress(campaign_id)
    assert progress.state == "done" and progress.delivered == estimate.receiving and progress.read == 0
    async with engine.connect() as conn:
        per_box = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT f.mailbox_id) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id "
                    "WHERE e.message_id = :m"
                ),
                {"m": (await conn.execute(text("SELECT message_id FROM campaigns WHERE id = :c"), {"c": campaign_id})).scalar()},
            )
        ).one()
        messages = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar()
        conversations = (await conn.execute(text("SELECT count(*) FROM conversations WHERE is_campaign"))).scalar()
        participants = (await conn.execute(text("SELECT count(*) FROM conversation_participants"))).scalar()
    assert per_box[0] == per_box[1] == estimate.receiving
    assert messages == 1 and conversations == 1 and participants == 1
