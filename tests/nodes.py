"""`caducee serve` as a real process on loopback ports: the tests of roles, backups and
failover start nodes the way an operator does, and stop them with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from conftest import free_port

PORTS = ("http", "mx", "submission", "submissions", "imap", "imaps")


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    data_dir: Path
    ports: dict[str, int]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def credentials(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.data_dir / "demo-credentials.json").read_text())

    def listening(self, name: str) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.ports[name]), timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_node(
    directory: Path,
    database_url: str,
    *,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait_for: tuple[str, ...] = ("http",),
    timeout: float = 120,
) -> Node:
    """`caducee serve ARGS` with a data directory of its own under `directory`, every
    listener on a free loopback port; returns once the `wait_for` ports accept connections
    (and, with --demo, the credentials file is written)."""
    directory.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in PORTS}
    data_dir = directory / "var"
    environment = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(data_dir),
        "CADUCEE_DATABASE_URL": database_url,
        "CADUCEE_TRUSTED_NETWORKS": "127.0.0.0/8",
        "CADUCEE_LOG_LEVEL": "WARNING",
        "CADUCEE_DEMO_PSC_PORT": "0",
        **{f"CADUCEE_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **(env or {}),
    }
    log = directory / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "caducee", "serve", *args], env=environment, stdout=subprocess.DEVNULL, stderr=open(log, "wb")
    )
    node = Node(process, data_dir, ports, log, environment)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        demo_ready = "--demo" not in args or (data_dir / "demo-credentials.json").exists()
        if demo_ready and all(node.listening(name) for name in wait_for) and _healthy(node):
            return node
        if process.poll() is not None:
            raise RuntimeError(f"caducee serve {' '.join(args)} stopped ({process.returncode}):\n{node.output()}")
        time.sleep(0.2)
    node.stop()
    raise RuntimeError(f"caducee serve {' '.join(args)} did not start:\n{node.output()}")


def _healthy(node: Node) -> bool:
    try:
        return httpx.get(node.base_url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def deployment_env(data_dir: Path) -> dict[str, str]:
    """What a PostgreSQL node without --demo must be given, from another node's data directory
    (as nodes sharing a certificate volume and one master key are): the master key and the
    certificate files, under the names docker-compose.yml uses."""
    import base64

    pki = data_dir / "pki"
    env = {
        "CADUCEE_TLS_CERT": str(pki / "server.crt"),
        "CADUCEE_TLS_KEY": str(pki / "server.key"),
        "CADUCEE_TRUST_ANCHORS": str(pki / "anchors.pem"),
        "CADUCEE_RELAY_CLIENT_CERT": str(pki / "operator.crt"),
        "CADUCEE_RELAY_CLIENT_KEY": str(pki / "operator.key"),
        "CADUCEE_SMIME_CERT": str(pki / "operator-smime.crt"),
        "CADUCEE_SMIME_KEY": str(pki / "operator-smime.key"),
        "CADUCEE_SMIME_KEYS_DIR": str(pki / "mailboxes"),
        "CADUCEE_CRL_FILES": str(pki / "org-ca.crl"),
    }
    if (data_dir / "master.key").exists():
        env["CADUCEE_MASTER_KEY"] = base64.b64encode((data_dir / "master.key").read_bytes()).decode()
    return env
