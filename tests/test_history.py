"""The access history is append-only and tamper-evident: every entry is chained to its
patient's previous one under a key the database does not hold, the database refuses UPDATE
and DELETE, and `caducee history verify` finds an entry altered, removed, moved, or cut off
the end (the last with the published checkpoints)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.config import Settings
from caducee.crypto.atrest import load_master_key
from caducee.history.chain import history_key
from caducee.history.service import CHECKPOINT_DIR, Access, AccessHistory


@pytest.fixture
async def history(engine: AsyncEngine, settings: Settings) -> AsyncIterator[AccessHistory]:
    recorder = AccessHistory(engine, history_key(load_master_key(settings.data_dir, environ_value="")))
    try:
        yield recorder
    finally:
        await recorder.close()


async def fill(history: AccessHistory) -> None:
    """Two patients, read at the same time by several people (one group commit, interleaved)."""
    await asyncio.gather(
        *(
            history.record(Access(patient, f"Dr Lecteur {n}", "document-read", f"document {n}", "Cabinet des Lilas", "authorised"))
            for n in range(6)
            for patient in (1, 2)
        )
    )
    for _ in range(3):
        await history.record(Access(1, "Claire Martin", "login", right="patient"))


def verify(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it."""
    env = {**os.environ, "CADUCEE_DATABASE_URL": settings.database_url, "CADUCEE_DATA_DIR": str(settings.data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "caducee", "history", *(extra or ("verify",))], env=env, capture_output=True, text=True, timeout=120
    )


async def tamper(conn: AsyncConnection, backend: str, *statements: str) -> None:
    """As someone with write access to the database would: around the append-only triggers."""
    if backend == "postgresql":
        await conn.execute(text("SET session_replication_role = replica"))  # triggers off for this session only
    else:
        await conn.execute(text("DROP TRIGGER access_history_no_update"))
        await conn.execute(text("DROP TRIGGER access_history_no_delete"))
    for statement in statements:
        await conn.execute(text(statement))


async def test_a_chained_history_verifies_and_reads_newest_first(history: AccessHistory, settings: Settings) -> None:
    await fill(history)
    report = await history.verify()
    assert report.ok and report.entries == 15 and report.patients == 2, report.problems
    entries = await history.read(1)
    assert [entry.action for entry in entries[:3]] == ["login"] * 3 and entries[-1].structure == "Cabinet des Lilas"
    assert entries[-1].right_label == "Autorisé"
    done = verify(settings)
    assert done.returncode == 0 and "15 entries of 2 patient(s)" in done.stdout and "intact" in done.stdout, done.stderr


async def test_the_database_refuses_updates_and_deletes(history: AccessHistory, engine: AsyncEngine) -> None:
    await fill(history)
    for statement in ("UPDATE access_history SET actor = 'personne'", "DELETE FROM access_history"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with engine.begin() as conn:
                await conn.execute(text(statement))


def _seq(seq: int) -> str:
    return f"(SELECT id FROM access_history WHERE patient_id = 1 AND seq = {seq})"


TAMPERING = {
    "altered": ["UPDATE access_history SET actor = 'Quelqu''un d''autre' WHERE patient_id = 1 AND seq = 4"],
    "removed": ["DELETE FROM access_history WHERE patient_id = 1 AND seq = 5"],
    "reordered": [
        "UPDATE access_history SET seq = -1 WHERE patient_id = 1 AND seq = 3",
        "UPDATE access_history SET seq = 3 WHERE patient_id = 1 AND seq = 4",
        "UPDATE access_history SET seq = 4 WHERE patient_id = 1 AND seq = -1",
    ],
    "truncated": ["DELETE FROM access_history WHERE patient_id = 1 AND seq = 9"],
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
async def test_verify_finds_each_kind_of_tampering(
    kind: str, history: AccessHistory, engine: AsyncEngine, settings: Settings, backend: str
) -> None:
    await fill(history)
    async with engine.begin() as conn:
        await tamper(conn, backend, *TAMPERING[kind])
    report = await history.verify()
    assert report.problems and {problem.kind for problem in report.problems} == {kind}, report.problems
    assert all(problem.patient_id == 1 for problem in report.problems)  # the other patient's chain is intact
    done = verify(settings)
    assert done.returncode == 1 and f": {kind}:" in done.stderr and "problem(s)" in done.stdout, (done.stdout, done.stderr)


async def test_a_checkpoint_catches_the_newest_entries_cut_off_with_their_head(
    history: AccessHistory, engine: AsyncEngine, settings: Settings, backend: str
) -> None:
    """Removing the last entries and rolling the head back to the entry before leaves a chain
    that is consistent in itself: only what was published before says it was longer."""
    await fill(history)
    done = verify(settings, "checkpoint")
    assert done.returncode == 0 and "publish its root" in done.stdout, done.stderr
    assert len(list((settings.data_dir / CHECKPOINT_DIR).glob("*.json"))) == 1
    async with engine.begin() as conn:
        await tamper(
            conn,
            backend,
            "DELETE FROM access_history WHERE patient_id = 1 AND seq = 9",
            "UPDATE access_history_heads SET seq = 8, entry_hash = (SELECT entry_hash FROM access_history WHERE patient_id = 1 AND seq = 8) "
            "WHERE patient_id = 1",
        )
    assert [problem.kind for problem in (await history.verify()).problems] == []  # without the checkpoint: nothing to see
    done = verify(settings)
    assert done.returncode == 1 and ": checkpoint:" in done.stderr, (done.stdout, done.stderr)
