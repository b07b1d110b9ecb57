"""Campaigns without HTTP: population import, targeting by the rules as sets, filing on read, pause, recall."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from caducee.annuaire.population import PlainSource, import_population
from caducee.annuaire.synthetic_population import write_population
from caducee.annuaire.targets import Criteria
from caducee.campaigns.deliveries import Deliveries, advance
from caducee.campaigns.service import Campaigns

PATIENTS = 3000


async def populate(engine, settings, tmp_path: Path, rows: int = PATIENTS, start: int = 0):  # type: ignore[no-untyped-def]
    path = write_population(tmp_path / f"population-{start}.txt", rows, opposed_every=50, closed_every=70, start=start)
    async with engine.begin() as conn:
        return await import_population(conn, PlainSource(path), patient_domain=settings.patient_domain)


async def inboxes(engine) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """(patient id, mailbox id) of every patient, as the webmail would open them."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT p.id, m.id FROM patients p JOIN mailboxes m ON m.patient_id = p.id ORDER BY p.id"))
        return [(int(r[0]), int(r[1])) for r in rows]


async def holding(engine, message_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(entries of the message, distinct mailboxes holding it); no UID given twice anywhere."""
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
        twice = (
            await conn.execute(
                text("SELECT count(*) FROM (SELECT folder_id, uid FROM mailbox_entries GROUP BY folder_id, uid HAVING count(*) > 1) d")
            )
        ).scalar()
    assert twice == 0
    return int(row[0]), int(row[1])


async def message_of(engine, campaign_id: int) -> int:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT message_id FROM campaigns WHERE id = :c"), {"c": campaign_id})).scalar_one())


def test_the_mark_stops_below_a_paused_campaign() -> None:
    assert advance(0, {1, 2}, [(1, "sent"), (2, "sent")]) == (2, set())
    assert advance(0, {1, 3}, [(1, "sent"), (2, "paused"), (3, "sent")]) == (1, {3})
    assert advance(1, {2, 3}, [(2, "sent"), (3, "sent")]) == (3, set())
    assert advance(0, set(), [(1, "recalled"), (2, "cancelled")]) == (2, set())


async def test_a_campaign_reaches_every_patient_the_rules_allow_once(gateway, engine, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    report = await populate(engine, settings, tmp_path)
    assert report.inserted == PATIENTS
    cnam = gateway.credentials["cnam"]["address"]
    service = Campaigns(engine, settings, gateway.pipeline)
    campaign_id, _ = await service.create(cnam, subject="Dépistage", body="Faites le test : https://www.ameli.fr", criteria=Criteria())
    estimate = await service.estimate(cnam, Criteria(), campaign_id)
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(text("SELECT status, count(*) FROM patients GROUP BY status"))).all())
        entries_before = (await conn.execute(text("SELECT count(*) FROM mailbox_entries"))).scalar()
    assert estimate.skipped == {"opposed": statuses["opposed"], "closed": statuses["closed"]}
    assert await service.start(campaign_id) == "sent"
    progress = await service.progress(campaign_id)
    assert progress.delivered == estimate.receiving and progress.read == 0
    message_id = await message_of(engine, campaign_id)
    async with engine.connect() as conn:  # sending wrote nothing per patient
        assert (await conn.execute(text("SELECT count(*) FROM mailbox_entries"))).scalar() == entries_before

    # Profiles created after the campaign was sent do not get it.
    await populate(engine, settings, tmp_path, 40, start=PATIENTS)
    deliveries = Deliveries(engine)
    everyone = await inboxes(engine)
    assert await deliveries.materialise(everyone) == estimate.receiving
    assert await Deliveries(engine).materialise(everyone) == 0  # another process: nothing twice
    assert await holding(engine, message_id) == (estimate.receiving, estimate.receiving)
    async with engine.connect() as conn:
        messages = (await conn.execute(text("SELECT count(*) FROM messages"))).scalar()
        conversations = (await conn.execute(text("SELECT count(*) FROM conversations WHERE is_campaign"))).scalar()
        participants = (await conn.execute(text("SELECT count(*) FROM conversation_participants"))).scalar()
        refused = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id JOIN mailboxes m ON m.id = f.mailbox_id "
                    "JOIN patients p ON p.id = m.patient_id WHERE e.message_id = :m AND (p.status IN ('opposed', 'closed') "
                    "OR p.id > (SELECT patient_cutoff FROM campaigns WHERE message_id = :m))"
                ),
                {"m": message_id},
            )
        ).scalar()
    assert messages == 1 and conversations == 1 and participants == 1 and refused == 0


async def test_pause_holds_the_filing_resume_and_recall(gateway, engine, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await populate(engine, settings, tmp_path, 600)
    cnam = gateway.credentials["cnam"]["address"]
    service = Campaigns(engine, settings, gateway.pipeline)
    first, _ = await service.create(cnam, subject="Vaccin", body="Grippe.", criteria=Criteria())
    second, _ = await service.create(cnam, subject="Dépistage", body="Colorectal.", criteria=Criteria(sex="F"))
    assert await service.start(first) == "sent" and await service.start(second) == "sent"
    assert await service.pause(first) == "paused"
    everyone = await inboxes(engine)
    half = everyone[: len(everyone) // 2]
    women = (await service.progress(second)).delivered
    deliveries = Deliveries(engine)
    await deliveries.materialise(half)
    first_message, second_message = await message_of(engine, first), await message_of(engine, second)
    assert (await holding(engine, first_message))[0] == 0  # paused: not filed
    filed_women = (await holding(engine, second_message))[0]
    assert 0 < filed_women < women
    assert await service.resume(first) == "sent"
    await deliveries.materialise(everyone)
    assert (await holding(engine, first_message))[0] == (await service.progress(first)).delivered
    assert (await holding(engine, second_message))[0] == women  # the ones filed while paused, not twice
    recalled = await service.recall(second)
    assert recalled.state == "recalled" and recalled.recalled == women and recalled.read_before_recall == 0
    assert (await holding(engine, second_message))[0] == 0
