"""The dossier's test world: the gateway and the HTTP app (build_app wires the XDM intake as
one of the pipeline's post-delivery consumers), mail sent by smtplib as a mail client does."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import httpx
from conftest import RunningGateway, RunningHTTP
from webmail_client import login

from caducee.config import Settings
from caducee.dossier.service import Dossier, Professional


@dataclasses.dataclass
class World:
    gateway: RunningGateway
    http: RunningHTTP
    outbox: Path

    @property
    def dossier(self) -> Dossier:
        return self.http.server.config.app.state.dossier  # type: ignore[no-any-return]

    def patient(self, key: str) -> dict[str, Any]:
        return self.gateway.credentials["patients"][key]  # type: ignore[no-any-return]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http.base_url, follow_redirects=False, timeout=30)

    async def logged_in(self, key: str = "adult_1") -> tuple[httpx.AsyncClient, str]:
        client = self.client()
        who = self.patient(key)
        return client, await login(client, self.outbox, who["ins"], who["password"], who["email"])

    async def send(self, msg: EmailMessage, key: str = "doctor") -> int:
        """A professional's mail client (submission, STARTTLS, AUTH); then wait for the intake."""
        address, password = self.gateway.account(key)

        def send() -> int:
            with smtplib.SMTP("127.0.0.1", self.gateway.ports["submission"], timeout=30) as client:
                client.starttls(context=ssl.create_default_context(cafile=str(self.gateway.ca.files.cert)))
                client.login(address, password)
                client.sendmail(address, [str(msg["To"])], msg.as_bytes(policy=SMTP_POLICY))
            return 250

        code = await asyncio.to_thread(send)
        await self.settle()
        return code

    async def settle(self) -> None:
        """Wait for the packages filed by the post-delivery fast path, then the dossier's writes."""
        await self.gateway.pipeline.post_delivery.settle()
        await self.dossier.close()

    async def account(self, key: str):  # type: ignore[no-untyped-def]
        return await self.dossier.patient_by_ins(self.patient(key)["ins"])


DOCTOR = Professional("810000000009", "Dr Sophie Bernard", "Cabinet médical des Lilas")
NURSE = Professional("810000000017", "M. Karim Haddad", "Cabinet médical des Lilas")
EMERGENCY_DOCTOR = Professional("810000000025", "Dr Urgentiste", "SAMU 75")


@asynccontextmanager
async def running_world(engine: Any, settings: Settings, tmp_path: Path) -> AsyncIterator[World]:
    """A gateway and the web app built on its pipeline (as `caducee serve` wires them), stopped after."""
    from caducee.server import build_app

    gateway = await RunningGateway(engine, settings, tmp_path).start()
    http = RunningHTTP(build_app(engine, settings, gateway.pipeline))
    await http.start()
    try:
        yield World(gateway, http, settings.data_dir / "outbox")
    finally:
        await http.stop()
        await gateway.stop()
