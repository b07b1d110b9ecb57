"""The post-delivery queue (`gateway.postdelivery`): what the dossier and the agenda must do with
a delivered message survives the process that acknowledged it.

- `caducee serve` SIGKILLed right after the 250 of a package and an invitation, before their
  consumers ran: started again, it files the package once and makes the appointment once (and
  a row run again after its filing files nothing twice);
- a mail-only node accepts, an http node files;
- a consumer that keeps failing ends `failed` after its attempts, with an ERROR line and the metric;
- ordinary mail writes no row.

Every test on SQLite and, with CADUCEE_TEST_PG, on PostgreSQL, over real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import signal
import smtplib
import subprocess
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import pytest
from agenda_helpers import ics, invitation_mail
from dossier_client import World, running_world
from mail import message
from nodes import Node, deployment_env, start_node
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from xdm_builder import PDF, Doc, package, xdm_mail

from caducee.gateway import postdelivery


def trusted_send(node: Node, sender: str, msg: EmailMessage) -> None:
    """Practice software on the trusted network (no AUTH), as test_roles sends."""
    with smtplib.SMTP("127.0.0.1", node.ports["submission"], timeout=30) as client:
        client.sendmail(sender, [str(msg["To"])], msg.as_bytes(policy=SMTP_POLICY))


async def rows(engine: AsyncEngine) -> list[tuple[str, str, int, str]]:
    """(consumer, state, attempts, claimed_by) of every post-delivery row, in order."""
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT consumer, state, attempts, claimed_by FROM post_delivery_queue ORDER BY id"))
        return [tuple(row) for row in found]  # type: ignore[misc]


async def filed(engine: AsyncEngine) -> tuple[int, int, int]:
    """(dossier intakes, dossier documents, agenda appointments)."""
    async with engine.connect() as conn:
        counts = []
        for table in ("dossier_intakes", "dossier_documents", "agenda_appointments"):
            counts.append(int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()))
    return counts[0], counts[1], counts[2]


async def until(condition, timeout: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def mails(credentials: dict) -> tuple[str, EmailMessage, EmailMessage]:  # type: ignore[type-arg]
    """The doctor's package (two documents) and invitation, both to Claire."""
    doctor = credentials["professionals"]["doctor"]["address"]
    claire = credentials["patients"]["adult_1"]
    archive = package([Doc(), Doc(name="DOC0002.PDF", title="Ordonnance", unique_id="1.2.3.4.2")], claire["ins"])
    invitation = invitation_mail(doctor, claire["address"], ics(organizer=doctor, attendee=claire["address"]))
    return doctor, xdm_mail(doctor, claire["address"], archive), invitation


QUEUE = {"CADUCEE_POST_DELIVERY_POLL_SECONDS": "0.3", "CADUCEE_LOG_LEVEL": "INFO"}


async def test_a_process_killed_after_the_250_files_the_package_and_the_invitation_once_when_started_again(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    # The fast path waits 4 s before running the consumers: the window the node is killed in.
    # The lease (6 s) outlasts it, so the node's own poll does not take its rows during the hold.
    env = {**QUEUE, "CADUCEE_POST_DELIVERY_HOLD_SECONDS": "4", "CADUCEE_POST_DELIVERY_LEASE_SECONDS": "6"}
    node = start_node(tmp_path / "a", database_url, args=("--demo",), env=env, wait_for=("http", "submission"))
    try:
        doctor, package_mail, invitation = mails(node.credentials())
        await asyncio.to_thread(trusted_send, node, doctor, package_mail)  # returns on the 250
        await asyncio.to_thread(trusted_send, node, doctor, invitation)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=30)
    finally:
        node.stop()
    assert await filed(engine) == (0, 0, 0)  # acknowledged, not yet filed when the process died
    assert [(consumer, state) for consumer, state, _, _ in await rows(engine)] == [("dossier", "claimed"), ("agenda", "claimed")]

    node = start_node(tmp_path / "a", database_url, args=("--demo",), env=env, wait_for=("http",))
    try:
        # Once the dead process's lease runs out, the poll of the new one takes the rows.
        await until(lambda: _all_done(engine), what="the rows worked after the restart")
        assert await filed(engine) == (1, 2, 1)
        assert all(attempts == 2 for _, _, attempts, _ in await rows(engine))  # the killed attempt counted

        # A row run again (as after a crash between its filing and its `done`) files nothing twice.
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE post_delivery_queue SET state = 'pending', next_attempt_at = created_at"))
        await until(lambda: _all_done(engine), what="the rows worked again")
        assert await filed(engine) == (1, 2, 1)
    finally:
        assert node.stop() == 0, node.output()
    assert "post-delivery" not in "\n".join(line for line in node.output().splitlines() if " ERROR " in line)


async def _all_done(engine: AsyncEngine) -> bool:
    found = await rows(engine)
    return bool(found) and all(state == "done" for _, state, _, _ in found)


async def test_a_mail_only_node_accepts_and_an_http_node_files(tmp_path: Path, database_url: str, engine: AsyncEngine) -> None:
    key = {"CADUCEE_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    mail = start_node(tmp_path / "a", database_url, args=("--demo", "--role", "smtp,relay"), env={**QUEUE, **key}, wait_for=("submission",))
    try:
        doctor, package_mail, invitation = mails(mail.credentials())
        await asyncio.to_thread(trusted_send, mail, doctor, package_mail)
        await asyncio.to_thread(trusted_send, mail, doctor, invitation)
        await asyncio.sleep(1)  # more than a poll: nobody on the mail node works the rows
        assert await rows(engine) == [("dossier", "pending", 0, ""), ("agenda", "pending", 0, "")]
        assert await filed(engine) == (0, 0, 0)

        (tmp_path / "b" / "var").mkdir(parents=True)
        subprocess.run(["cp", "-a", str(mail.data_dir / "pki"), str(tmp_path / "b" / "var" / "pki")], check=True)
        shared = {**deployment_env(tmp_path / "b" / "var"), **key, **QUEUE}
        web = start_node(tmp_path / "b", database_url, args=("--role", "http"), env=shared, wait_for=("http",))
        try:
            await until(lambda: _all_done(engine), what="the http node working the rows")
            assert await filed(engine) == (1, 2, 1)
            assert [attempts for _, _, attempts, _ in await rows(engine)] == [1, 1]
        finally:
            assert web.stop() == 0, web.output()
    finally:
        assert mail.stop() == 0, mail.output()


@pytest.fixture
async def world(engine, settings, tmp_path: Path) -> AsyncIterator[World]:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(settings, webmail_cookie_secure=False, post_delivery_poll_seconds=0.05)
    async with running_world(engine, settings, tmp_path) as world:
        yield world


async def test_a_consumer_that_keeps_failing_ends_failed_with_an_error_line_and_the_metric(
    world: World, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from caducee.dossier.intake import XdmIntake

    async def broken(self, sender, recipient):  # type: ignore[no-untyped-def]
        raise RuntimeError("the dossier's store is away")

    monkeypatch.setattr(XdmIntake, "take", broken)
    monkeypatch.setattr(postdelivery, "RETRY_BASE_SECONDS", 0.01)
    sample = {"consumer": "dossier", "outcome": "failed"}
    before = REGISTRY.get_sample_value("caducee_post_delivery_total", sample) or 0.0
    claire = world.patient("adult_1")
    await world.send(xdm_mail(world.gateway.account("doctor")[0], claire["address"], package([Doc()], claire["ins"])))

    async def failed() -> bool:
        return [state for _, state, _, _ in await rows(engine)] == ["failed"]

    await until(failed, what="the row given up")
    [(_, _, attempts, _)] = await rows(engine)
    assert attempts == postdelivery.MAX_ATTEMPTS == 8
    async with engine.connect() as conn:
        error = (await conn.execute(text("SELECT last_error FROM post_delivery_queue"))).scalar_one()
    assert error == "RuntimeError: the dossier's store is away"
    given_up = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "caducee.gateway.postdelivery"]
    assert len(given_up) == 1 and "failed 8 times: given up" in given_up[0].getMessage()
    assert REGISTRY.get_sample_value("caducee_post_delivery_total", sample) == before + 1
    assert await filed(engine) == (0, 0, 0)
    assert any(b"IHE_XDM.ZIP" in raw for raw in await world.gateway.inbox(claire["address"]))  # the message itself is delivered


async def test_only_what_a_consumer_wants_writes_a_row(world: World, engine: AsyncEngine) -> None:
    doctor = world.gateway.account("doctor")[0]
    nurse = world.gateway.account("nurse")[0]
    claire = world.patient("adult_1")
    archive = package([Doc()], claire["ins"])
    ordinary = [
        message(doctor, claire["address"], "Résultats", "Vos résultats sont normaux."),
        message(doctor, claire["address"], "Ordonnance", attachment=("ordonnance.pdf", PDF, "application/pdf")),
        xdm_mail(doctor, nurse, archive),  # a package to a professional: no dossier to file it in
    ]
    for msg in ordinary:
        await world.send(msg)
    assert await rows(engine) == []
    assert len(await world.gateway.inbox(claire["address"])) == 2

    await world.send(xdm_mail(doctor, claire["address"], archive))
    await world.send(invitation_mail(doctor, claire["address"], ics(organizer=doctor, attendee=claire["address"])))
    assert [(consumer, state, attempts) for consumer, state, attempts, _ in await rows(engine)] == [
        ("dossier", "done", 1),
        ("agenda", "done", 1),
    ]
    assert await filed(engine) == (1, 1, 1)
