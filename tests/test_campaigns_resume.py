"""A fan-out killed half way (SIGKILL) resumes, and every target has the message exactly once;
two runners on one database split the batches without a duplicate."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text
from test_campaigns_core import populate

from caducee import db
from caducee.annuaire.targets import Criteria
from caducee.campaigns.runner import Runner
from caducee.campaigns.service import Campaigns

PATIENTS = 6000


async def _counts(engine, message_id: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT f.mailbox_id) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id "
                    "WHERE e.message_id = :m"
                ),
                {"m": message_id},
            )
        ).one()
        uids = (
            await conn.execute(
                text("SELECT count(*) FROM (SELECT folder_id, uid FROM mailbox_entries GROUP BY folder_id, uid HAVING count(*) > 1) d")
            )
        ).scalar()
    assert uids == 0
    return int(row[0]), int(row[1])


async def _started(gateway, engine, settings, tmp_path: Path, batch: int) -> tuple[Campaigns, int, int]:  # type: ignore[no-untyped-def]
    await populate(engine, settings, tmp_path, PATIENTS)
    service = Campaigns(engine, settings.replace(campaign_batch_size=batch), gateway.pipeline)
    campaign_id, _ = await service.create(
        gateway.credentials["cnam"]["address"], subject="Vaccin HPV", body="Pour votre enfant.", criteria=Criteria()
    )
    receiving = (await service.estimate(gateway.credentials["cnam"]["address"], Criteria(), campaign_id)).receiving
    assert await service.start(campaign_id) == "running"
    return service, campaign_id, receiving


async def test_a_fan_out_killed_half_way_resumes_exactly_once(gateway, engine, settings, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    service, campaign_id, receiving = await _started(gateway, engine, settings, tmp_path, batch=100)
    async with engine.connect() as conn:
        message_id = (await conn.execute(text("SELECT message_id FROM campaigns WHERE id = :c"), {"c": campaign_id})).scalar_one()
    command = [sys.executable, "-m", "caducee", "campaigns", "run", "--data-dir", str(settings.data_dir), "--database-url", database_url]
    environment = {**os.environ, "CADUCEE_CAMPAIGN_BATCH_SIZE": "100", "CADUCEE_SMIME": "off"}
    child = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and child.poll() is None:
            async with engine.connect() as conn:
                done = (await conn.execute(text("SELECT count(*) FROM campaign_batches WHERE state = 'done'"))).scalar_one()
            if done >= 5:
                break
            await asyncio.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    async with engine.connect() as conn:
        pending = (await conn.execute(text("SELECT count(*) FROM campaign_batches WHERE state = 'pending'"))).scalar_one()
    assert done >= 5 and pending > 0  # killed in the middle
    partial, _ = await _counts(engine, message_id)
    assert 0 < partial < receiving
    resumed = subprocess.run(command, env=environment, capture_output=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert await _counts(engine, message_id) == (receiving, receiving)
    assert (await service.progress(campaign_id)).state == "done"


async def test_two_runners_split_the_batches_without_duplicates(gateway, engine, settings, tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    service, campaign_id, receiving = await _started(gateway, engine, settings, tmp_path, batch=150)
    second = db.create_engine(database_url)  # another node: its own connections
    try:
        first_runner, second_runner = Runner(engine, service), Runner(second, Campaigns(second, service.settings, None))
        second_runner.node = "other-node:1"
        filed = await asyncio.gather(first_runner.work(), second_runner.work())
    finally:
        await second.dispose()
    assert sum(filed) == receiving
    async with engine.connect() as conn:
        message_id = (await conn.execute(text("SELECT message_id FROM campaigns WHERE id = :c"), {"c": campaign_id})).scalar_one()
        nodes = dict((await conn.execute(text("SELECT node, count(*) FROM campaign_batches GROUP BY node"))).all())
    assert await _counts(engine, message_id) == (receiving, receiving)
    if engine.dialect.name == "postgresql":  # SKIP LOCKED: both nodes took batches at once
        assert len(nodes) == 2 and all(count > 0 for count in nodes.values()), nodes
