"""Helpers of the agenda tests: invitations as a practice's software writes them, and a
site (gateway + HTTP app) whose pipeline feeds the agenda."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningGateway, RunningHTTP
from test_gateway_rules import smtp_send
from webmail_client import form_token, login


def ics(
    *,
    organizer: str,
    attendee: str,
    uid: str = "rdv-1@cabinet-des-lilas.fr",
    start: str | None = None,
    method: str = "REQUEST",
    sequence: int = 0,
    summary: str = "Consultation de suivi",
    location: str = "Cabinet médical des Lilas, 12 rue des Lilas, Paris",
    tzid: str | None = "Europe/Paris",
    extra: str = "",
    stamp: str = "20260101T090000Z",
) -> str:
    start = start or (datetime.now(UTC) + timedelta(days=10)).strftime("%Y%m%dT100000")
    dtstart = f"DTSTART;TZID={tzid}:{start}" if tzid else f"DTSTART:{start}"
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Logiciel de cabinet//FR\r\n"
        f"METHOD:{method}\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{stamp}\r\nSEQUENCE:{sequence}\r\n"
        f"{dtstart}\r\nDURATION:PT30M\r\nSUMMARY:{summary}\r\nLOCATION:{location}\r\n"
        f"ORGANIZER;CN=Dr Sophie Bernard:mailto:{organizer}\r\n"
        f"ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{attendee}\r\n{extra}END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def invitation_mail(
    sender: str,
    to: str,
    calendar: str,
    *,
    method: str = "REQUEST",
    subject: str = "Invitation : consultation",
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    """What Thunderbird or a practice's software sends: text and the calendar as alternatives."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("Vous êtes invité(e) à une consultation.\n")
    msg.add_alternative(calendar, subtype="calendar", charset="utf-8", params={"method": method})
    return msg


@dataclasses.dataclass
class AgendaSite:
    gateway: RunningGateway
    http: RunningHTTP
    app: Any
    outbox: Path

    def patient(self, key: str) -> dict[str, Any]:
        return self.gateway.credentials["patients"][key]

    @property
    def doctor(self) -> str:
        return self.gateway.account("doctor")[0]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http.base_url, follow_redirects=False, timeout=30)

    async def logged_in(self, key: str = "adult_1") -> tuple[httpx.AsyncClient, str]:
        client = self.client()
        who = self.patient(key)
        return client, await login(client, self.outbox, who["ins"], who["password"], who["email"])

    async def invite(self, to: str, calendar: str, **kwargs: Any) -> tuple[EmailMessage, int]:
        """The doctor's mail client sends the invitation; waits until the agenda read it."""
        msg = invitation_mail(self.doctor, to, calendar, **kwargs)
        code, _ = await asyncio.to_thread(smtp_send, self.gateway, msg, [to])
        await self.gateway.pipeline.post_delivery.settle()  # the invitation filed by the post-delivery fast path
        return msg, code

    async def patient_id(self, key: str) -> int:
        from caducee.annuaire import patients

        async with self.gateway.engine.connect() as conn:
            account = await patients.account_for_address(conn, self.patient(key)["address"])
        assert account is not None
        return account.id

    async def appointments(self, key: str = "adult_1") -> list[Any]:
        from caducee.agenda import store

        async with self.gateway.engine.connect() as conn:
            return await store.upcoming(
                conn, await self.patient_id(key), datetime.now(UTC) - timedelta(days=400), with_secret=True, limit=1000
            )


@pytest.fixture
async def site(engine, settings, tmp_path: Path) -> AsyncIterator[AgendaSite]:  # type: ignore[no-untyped-def]
    from caducee.server import build_app

    settings = dataclasses.replace(settings, webmail_cookie_secure=False, directory_cache_seconds=0.2)
    gateway = await RunningGateway(engine, settings, tmp_path).start()
    app = build_app(engine, settings, gateway.pipeline)
    http = RunningHTTP(app)
    await http.start()
    try:
        yield AgendaSite(gateway, http, app, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()


def first_link(html: str, pattern: str) -> str:
    found = re.search(pattern, html)
    assert found, html[:3000]
    return found.group(1)


__all__ = ["AgendaSite", "first_link", "form_token", "ics", "invitation_mail", "site"]
