"""Sealing keys: every sealed form names its key, and `caducee keys rotate` re-seals under a
new key while messages keep arriving; afterwards the new key alone opens everything."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.crypto.atrest import BodyCipher, MasterKeyError, load_master_key, sealing_keys_from_environment
from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
from caducee.mailbox.models import Message


def test_forms_name_their_key_and_legacy_forms_still_open() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = BodyCipher(old, [])
    sealed = before.seal(b"hello")
    assert before.is_current(sealed)
    rotated = BodyCipher(old, [new])
    assert rotated.open(sealed) == b"hello" and not rotated.is_current(sealed)
    assert rotated.is_current(rotated.reseal(sealed))
    nonce = os.urandom(12)  # the first version's form: no key id
    legacy = b"\x01" + nonce + AESGCM(old).encrypt(nonce, b"older", b"caducee:message-body:v1")
    assert rotated.open(legacy) == b"older" and not rotated.is_current(legacy)
    with pytest.raises(ValueError, match="does not know"):
        BodyCipher(new, [new]).open(sealed)
    with pytest.raises(MasterKeyError, match="key 2"):
        sealing_keys_from_environment(base64.b64encode(new).decode() + ",bad!")


def _message(sender: str, patient: str, n: int) -> bytes:
    return f"From: {sender}\r\nTo: {patient}\r\nSubject: rotation {n}\r\nMessage-ID: <rot{n}@demo.mssante.fr>\r\n\r\nbody {n}\r\n".encode()


async def test_rotate_under_load(gateway, engine: AsyncEngine, settings, database_url: str) -> None:  # type: ignore[no-untyped-def]
    sender, _ = gateway.account("doctor")
    patient = gateway.credentials["patients"]["adult_1"]["address"]
    for n in range(15):  # sealed under the master key, before any sealing key
        assert (
            await gateway.pipeline.accept(Envelope(sender, [patient], _message(sender, patient, n), Channel.SUBMISSION, sender))
        ).accepted
    master = load_master_key(settings.data_dir, environ_value="")
    new = os.urandom(32)
    encoded = [base64.b64encode(key).decode() for key in (new, master)]
    # The nodes now seal under the new key (CADUCEE_SEALING_KEYS=new,master) while `keys rotate` runs.
    nodes = AcceptPipeline(engine, settings, BodyCipher(master, [new, master]))
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(settings.data_dir),
        "CADUCEE_DATABASE_URL": database_url,
        "CADUCEE_MASTER_KEY": base64.b64encode(master).decode(),
        "CADUCEE_SEALING_KEYS": ",".join(encoded),
    }
    rotate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "caducee", "keys", "rotate", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    accepted = 0
    for n in range(15, 45):
        result = await nodes.accept(Envelope(sender, [patient], _message(sender, patient, n), Channel.SUBMISSION, sender))
        accepted += bool(result.accepted)
    out, err = await rotate.communicate()
    await nodes.close()
    assert rotate.returncode == 0, err.decode()
    assert "messages:" in out.decode() and accepted == 30
    only_new = BodyCipher(new, [new])
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Message.body, Message.summary))).all()
    bodies = [only_new.open(row.body) for row in rows]
    assert sum(b"Subject: rotation" in body for body in bodies) == 45
    assert all(only_new.is_current(row.body) and (row.summary is None or only_new.is_current(row.summary)) for row in rows)


def test_a_postgresql_node_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in {"CADUCEE_MASTER_KEY", "CADUCEE_TLS_CERT"}}
    env.update(
        CADUCEE_DATA_DIR=str(tmp_path / "var"),
        CADUCEE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        CADUCEE_HTTP_PORT="0",
        CADUCEE_SUBMISSION_PORT="0",
        CADUCEE_SUBMISSIONS_PORT="0",
        CADUCEE_MX_PORT="0",
        CADUCEE_IMAP_PORT="0",
        CADUCEE_IMAPS_PORT="0",
    )
    answer = subprocess.run([sys.executable, "-m", "caducee", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2
    assert "CADUCEE_MASTER_KEY" in answer.stderr and "tls_cert" in answer.stderr and "smime_cert" in answer.stderr
    assert not (tmp_path / "var" / "master.key").exists() and not (tmp_path / "var" / "pki").exists()


def test_serve_checks_the_schema_and_leaves_migrations_to_db_upgrade(tmp_path: Path) -> None:
    """Without --demo (even on SQLite), `serve` migrates nothing: it names the command to run."""
    import subprocess

    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(tmp_path / "var"),
        "CADUCEE_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        **{f"CADUCEE_{name}_PORT": "0" for name in ("HTTP", "SUBMISSION", "SUBMISSIONS", "MX", "IMAP", "IMAPS")},
    }
    answer = subprocess.run([sys.executable, "-m", "caducee", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 2 and "run `caducee db upgrade`" in answer.stderr, answer.stderr[-2000:]
