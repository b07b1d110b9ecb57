"""Filing campaigns on read, exactly once: a process killed (SIGKILL) while filing inboxes
leaves each inbox whole or untouched, and the next one finishes the job; two nodes filing
the same inboxes at once never file one twice; a start killed half way is sent once."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import text
from test_campaigns_core import holding, inboxes, message_of, populate

from caducee import db
from caducee.annuaire.targets import Criteria
from caducee.campaigns.deliveries import Deliveries
from caducee.campaigns.runner import Runner
from caducee.campaigns.service import Campaigns

PATIENTS = 6000

# A node filing every inbox, a few at a time (as webmail requests would), as a separate process.
FILER = textwrap.dedent(
    """
    import asyncio, sys
    from sqlalchemy import text
    from caducee import db
    from caducee.campaigns.deliveries import Deliveries

    async def main(url):
        engine = db.create_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT p.id, m.id FROM patients p JOIN mailboxes m ON m.patient_id = p.id ORDER BY p.id"))).all()
        deliveries = Deliveries(engine)
        for start in range(0, len(rows), 20):
            await deliveries.materialise([(int(p), int(m)) for p, m in rows[start : start + 20]], chunk=20)
        await engine.dispose()

    asyncio.run(main(sys.argv[1]))
    """
)


async def _sent(gateway, engine, settings, tmp_path: Path) -> tuple[Campaigns, int, int]:  # type: ignore[no-untyped-def]
    await populate(engine, settings, tmp_path, PATIENTS)
    service = Campaigns(engine, settings, gateway.pipeline)
    campaign_id, _ = await service.create(
        gateway.credentials["cnam"]["address"], subject="Vaccin HPV", body="Pour votre enfant.", criteria=Criteria()
    )
    receiving = (await service.estimate(gateway.credentials["cnam"]["address"], Criteria(), campaign_id)).receiving
    assert await service.start(campaign_id) == "sent"
    return service, campaign_id, receiving


async def test_a_filing_killed_half_way_resumes_exactly_once(gateway, engine, settings, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    service, campaign_id, receiving = await _sent(gateway, engine, settings, tmp_path)
    message_id = await message_of(engine, campaign_id)
    script = tmp_path / "filer.py"
    script.write_text(FILER)
    child = subprocess.Popen([sys.executable, str(script), database_url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and child.poll() is None:
            async with engine.connect() as conn:
                done = (await conn.execute(text("SELECT count(*) FROM campaign_inboxes"))).scalar_one()
            if done >= 500:
                break
            await asyncio.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    partial, _ = await holding(engine, message_id)
    assert done >= 500 and 0 < partial < receiving  # killed in the middle
    async with engine.connect() as conn:  # every inbox marked is filed, and none is filed without its mark
        unmarked = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id WHERE e.message_id = :m "
                    "AND NOT EXISTS (SELECT 1 FROM campaign_inboxes i WHERE i.mailbox_id = f.mailbox_id)"
                ),
                {"m": message_id},
            )
        ).scalar()
    assert unmarked == 0
    resumed = subprocess.run([sys.executable, str(script), database_url], capture_output=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert await holding(engine, message_id) == (receiving, receiving)
    assert (await service.progress(campaign_id)).delivered == receiving


async def test_two_nodes_filing_the_same_inboxes_file_each_once(gateway, engine, settings, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    service, campaign_id, receiving = await _sent(gateway, engine, settings, tmp_path)
    everyone = await inboxes(engine)
    second = db.create_engine(database_url)  # another node: its own connections
    try:
        first_node, second_node = Deliveries(engine), Deliveries(second)

        async def walk(node: Deliveries, order: list[tuple[int, int]]) -> int:
            made = 0
            for start in range(0, len(order), 50):
                made += await node.materialise(order[start : start + 50], chunk=50)
            return made

        filed = await asyncio.gather(walk(first_node, everyone), walk(second_node, everyone[len(everyone) // 3 :] + everyone))
    finally:
        await second.dispose()
    assert sum(filed) == receiving  # exactly once between them, whichever node got there first
    assert await holding(engine, await message_of(engine, campaign_id)) == (receiving, receiving)


async def test_a_start_killed_half_way_is_sent_once(gateway, engine, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    await populate(engine, settings, tmp_path, 300)
    service = Campaigns(engine, settings, gateway.pipeline)
    campaign_id, _ = await service.create(gateway.credentials["cnam"]["address"], subject="Rappel", body="Vaccin.", criteria=Criteria())
    async with engine.begin() as conn:  # as if the process died after storing the message, before sending
        await conn.execute(text("UPDATE campaigns SET state = 'starting' WHERE id = :c"), {"c": campaign_id})
    first, second = Runner(service), Runner(Campaigns(engine, settings, gateway.pipeline))
    reached = await asyncio.gather(first.work(), second.work())
    progress = await service.progress(campaign_id)
    assert progress.state == "sent" and sum(reached) == progress.delivered > 0
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM campaigns WHERE seq IS NOT NULL"))).scalar() == 1
