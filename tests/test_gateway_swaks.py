"""swaks (Debian's Swiss Army Knife for SMTP) against the submission listener."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is installed by `make test`")


def swaks(gateway, *extra: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    address, password = gateway.account("doctor")
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    command = [
        "swaks",
        "--server",
        f"127.0.0.1:{gateway.ports['submission']}",
        "--from",
        address,
        "--to",
        patient,
        "--header",
        "Subject: Rendez-vous",
        "--body",
        "Votre rendez-vous est confirmé pour mardi.",
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(gateway.ca.files.cert),
        "--tls-sni",
        "localhost",
        "--auth",
        "PLAIN",
        "--auth-user",
        address,
        "--auth-password",
        password,
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_swaks_submits_over_starttls_with_auth(gateway) -> None:  # type: ignore[no-untyped-def]
    done = await asyncio.to_thread(swaks, gateway)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "250 2.0.0 OK: queued as" in done.stdout
    stored = await gateway.inbox(gateway.credentials["patients"]["adult_1"]["address"])
    assert len(stored) == 1 and b"Rendez-vous" in stored[0]


async def test_swaks_with_a_wrong_password_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    address, _ = gateway.account("doctor")
    done = await asyncio.to_thread(swaks, gateway, "--auth-password", "not-the-password")
    assert done.returncode != 0 and "535 5.7.8" in done.stdout
