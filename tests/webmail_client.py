"""A webmail fixture for tests: the gateway, the HTTP app on a loopback port, and a patient
logged in through both steps with the code read from the outbox, as a person would."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import httpx


def latest_code(outbox: Path, to: str) -> str:
    """The code of the newest login-code email sent to `to` (other notifications, such as
    "a message is waiting", go to the same outbox)."""
    for path in sorted(outbox.glob("*.eml"), reverse=True):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == to and message["Subject"] == "Votre code de connexion Caducée":
            found = re.search(r"\b(\d{6})\b", message.get_content())
            assert found, message.get_content()
            return found.group(1)
    raise AssertionError(f"no code was sent to {to}")


def form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


async def login(client: httpx.AsyncClient, outbox: Path, identifier: str, password: str, email_address: str) -> str:
    """Both login steps through the pages; the session's CSRF token."""
    page = await client.get("/connexion")
    answer = await client.post("/connexion", data={"csrf": form_token(page.text), "identifiant": identifier, "mot_de_passe": password})
    assert answer.status_code == 303 and answer.headers["location"] == "/connexion/code", answer.text[:3000]
    page = await client.get("/connexion/code")
    answer = await client.post("/connexion/code", data={"csrf": form_token(page.text), "code": latest_code(outbox, email_address)})
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text[:3000]
    inbox = await client.get("/")
    assert inbox.status_code == 200
    return form_token(inbox.text)
