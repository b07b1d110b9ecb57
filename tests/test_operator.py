"""Issue 21, the operator's side: `make run` needs only Python, `caducee --version`, a busy port
refused by name, the test PKI's `issue` (PKCS#12 and where its password is) and `revoke` (only
what was issued)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

from conftest import free_port

from caducee import __version__


def caducee(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "caducee", *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


ROOT = Path(__file__).resolve().parent.parent


def test_make_run_needs_only_python_and_make_test_brings_the_peers() -> None:
    """What `make run` would do on a fresh clone (`make -n -B`: every step printed, nothing run):
    a venv, pip, the migrations and `caducee serve --demo`; never the Debian packages of the
    test peers (root, apt), which `make test` and `make bench` install."""
    run = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "-m venv" in run.stdout and "pip install" in run.stdout and "caducee serve --demo" in run.stdout
    for forbidden in ("system-packages", "apt", "sudo", "chromium", "dovecot", "postfix"):
        assert forbidden not in run.stdout.lower(), forbidden
    for target in ("test", "bench"):
        peers = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert "scripts/system-packages.sh" in peers.stdout, target


def test_version() -> None:
    answer = caducee("--version")
    assert answer.returncode == 0 and answer.stdout.strip() == f"caducee {__version__}"


def test_a_busy_port_is_refused_by_name_not_shared(tmp_path: Path) -> None:
    """Another program (here: a socket with SO_REUSEPORT, as a second `caducee serve` used to
    open) listens on the HTTP port: `caducee serve` says which port and setting, and stops,
    instead of sharing the port and answering some of its requests."""
    port = free_port()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    env = {
        "CADUCEE_DATA_DIR": str(tmp_path / "var"),
        "CADUCEE_HTTP_PORT": str(port),
        "CADUCEE_SUBMISSION_PORT": str(free_port()),
        "CADUCEE_SUBMISSIONS_PORT": "0",
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": "0",
        "CADUCEE_IMAPS_PORT": "0",
    }
    try:
        for extra in ([], ["--workers", "2"]):
            answer = caducee("serve", *extra, env=env)
            assert answer.returncode == 1, answer.stderr[-2000:]
            assert f"address already in use: 127.0.0.1:{port} (http_port, CADUCEE_HTTP_PORT)" in answer.stderr
        smtp = free_port()
        with socket.create_server(("127.0.0.1", smtp)):
            answer = caducee("serve", env={**env, "CADUCEE_HTTP_PORT": str(free_port()), "CADUCEE_SUBMISSION_PORT": str(smtp)})
        assert answer.returncode == 1 and "(submission_port, CADUCEE_SUBMISSION_PORT)" in answer.stderr
    finally:
        squatter.close()


def test_pki_issue_gives_a_pkcs12_and_revoke_refuses_unknown_serials(tmp_path: Path, database_url: str, settings, engine) -> None:  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12

    from caducee import db, demo

    async def seed() -> None:
        engine = db.create_engine(database_url)
        try:
            await demo.seed(engine, settings, certificates=False)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    env = {"CADUCEE_DATABASE_URL": database_url, "CADUCEE_DATA_DIR": str(settings.data_dir)}
    assert caducee("pki", "init", env=env).returncode == 0
    issued = caducee("pki", "issue", "sophie.bernard@demo.mssante.fr", env=env)
    assert issued.returncode == 0, issued.stderr
    p12 = settings.data_dir / "pki" / "handed-out" / "sophie.bernard@demo.mssante.fr.p12"
    secret = p12.with_name(p12.name + ".password")
    assert str(p12) in issued.stdout and str(secret) in issued.stdout and "password" in issued.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(p12.stat().st_mode) == 0o600
    key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), secret.read_text().strip().encode())
    assert key is not None and cert is not None
    serial = f"{cert.serial_number:x}"
    for unknown in ("1", "deadbeef", f"{cert.serial_number + 1:x}"):
        refused = caducee("pki", "revoke", unknown, env=env)
        assert refused.returncode == 1 and "was issued" in refused.stderr, refused.stderr
    assert caducee("pki", "revoke", "not-hex", env=env).returncode == 2
    revoked = caducee("pki", "revoke", serial, env=env)
    assert revoked.returncode == 0, revoked.stderr
    crl = x509.load_pem_x509_crl((settings.data_dir / "pki" / "org-ca.crl").read_bytes())
    assert cert.serial_number in {entry.serial_number for entry in crl}
