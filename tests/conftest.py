"""Fixtures shared by the suite.

Every database test runs on SQLite and, when `CADUCEE_TEST_PG` holds a URL, again on
PostgreSQL. A PostgreSQL that was asked for but cannot be reached is an error, never a
skip: a green run must mean both backends passed. Each run works in a database of its own
(created and dropped here), and each test starts from a clean, migrated schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.config import Settings

PG_URL = os.environ.get("CADUCEE_TEST_PG", "").strip()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """End the gpg-agents the run's keyrings started (gpg leaves one per home, reparented to
    PID 1): a finished run leaves no process behind."""
    from caducee.crypto.openpgp import stop_agent

    factory = getattr(session.config, "_tmp_path_factory", None)
    base = getattr(factory, "_basetemp", None)  # None when the run made no temporary directory
    if base is None:
        return
    for keyring in Path(base).rglob("pubring.kbx"):  # every GnuPG home of the run
        stop_agent(keyring.parent)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run async tests on the loop `caducee serve` runs on (uvloop), unless CADUCEE_EVENT_LOOP=asyncio."""
    if os.environ.get("CADUCEE_EVENT_LOOP", "uvloop") == "uvloop":
        import uvloop

        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(autouse=True, scope="session")
def light_password_hashing() -> Iterator[None]:
    """argon2id with small costs inside the test process: the demo world hashes six
    passwords per test (0.15 s each with the real parameters) and the suite is about who
    may log in, not about argon2's cost. The tests that start `caducee serve` as a process
    (test_serve, the browser tests) run with the real parameters."""
    from argon2 import PasswordHasher

    from caducee.core import passwords

    real = passwords._HASHER
    passwords._HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    passwords._HASHER = real


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    parsed = make_url(db.normalise_url(url))
    conn = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
        timeout=10,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated to head."""
    if not PG_URL:
        pytest.skip("CADUCEE_TEST_PG is not set")
    name = f"caducee_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_admin(PG_URL, f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach it is fatal here
        pytest.fail(f"CADUCEE_TEST_PG={PG_URL} cannot be reached: {exc}", pytrace=False)
    url = make_url(db.normalise_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    yield url
    asyncio.run(_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file copied for each test: migrating once keeps the suite fast."""
    path = tmp_path_factory.mktemp("template") / "caducee.sqlite3"
    db.upgrade(f"sqlite:///{path}")
    return path


async def _truncate_all(engine: AsyncEngine) -> None:
    db.import_all_models()
    names = ", ".join(table.name for table in db.Base.metadata.sorted_tables)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        path = tmp_path / "caducee.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=database_url)


@pytest.fixture
async def engine(database_url: str, backend: str) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(database_url)
    if backend == "postgresql":
        await _truncate_all(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


class RunningHTTP:
    """A uvicorn server on a real loopback socket, in the test's event loop."""

    def __init__(self, app: object) -> None:
        self.app = app
        import uvicorn

        from caducee.config import Settings
        from caducee.server import http_config

        # Bound here and handed to uvicorn: a port found free and bound later can be taken in
        # between (by an outgoing connection's ephemeral port, say).
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        # The production settings of uvicorn (`server.http_config`: no proxy headers believed).
        config = http_config(app, Settings(log_level="WARNING"), host="127.0.0.1", port=self.port, lifespan="on")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.socket]))
        for _ in range(500):
            if self.server.started:
                return
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        raise RuntimeError("HTTP server did not start")

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await self.task


@pytest.fixture
async def http(engine: AsyncEngine, settings: Settings) -> AsyncIterator[RunningHTTP]:
    """The HTTP app on `engine`, listening on a loopback port."""
    from caducee.server import build_app

    running = RunningHTTP(build_app(engine, settings))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


class RunningGateway:
    """The demo world, a development CA and the SMTP listeners on loopback ports."""

    def __init__(self, engine: AsyncEngine, settings: Settings, directory: Path, smime_template: Path | None = None) -> None:
        self.engine = engine
        self.smime_template = smime_template
        self.settings = settings
        self.directory = directory
        self.servers: list[asyncio.base_events.Server] = []
        self.ports: dict[str, int] = {}

    async def start(
        self, *, trusted_networks: list[str] | None = None, smime: bool = False, without_certificate: str = "refuse-remote"
    ) -> RunningGateway:
        """`smime`: the demo mailboxes get certificates and the pipeline its S/MIME stage
        (the other tests leave it out: they are about other stages)."""
        from caducee import demo
        from caducee.crypto.atrest import BodyCipher, load_master_key
        from caducee.crypto.devpki import DevCA
        from caducee.crypto.tls import server_context
        from caducee.gateway.pipeline import AcceptPipeline
        from caducee.gateway.smtp import ListenerConfig, start_listener
        from caducee.identity.mailauth import MailboxAuthenticator

        if smime and self.smime_template is not None:  # the trust space and the demo's keys, made once per run (RSA key generation is slow)
            shutil.copytree(self.smime_template, self.settings.data_dir, dirs_exist_ok=True)
        self.credentials = await demo.seed(self.engine, self.settings, certificates=smime)
        self.ca = DevCA(self.directory / "pki")
        server = self.ca.issue("server", "localhost", "Caducee", server=True, dns=["localhost"], ips=["127.0.0.1"])
        self.peer = self.ca.issue("peer", "mx.autre-operateur.mssante.fr", "Autre Operateur", client=True)
        self.cipher = BodyCipher(load_master_key(self.settings.data_dir, environ_value=""))
        self.smime = None
        if smime:
            from caducee.core.cpu import shared_pool
            from caducee.crypto.material import material_from_settings
            from caducee.gateway.protection import SmimeStage, WithoutCertificate

            self.material = material_from_settings(self.settings)
            self.smime = SmimeStage(self.engine, self.material, shared_pool(2), without_certificate=WithoutCertificate(without_certificate))
            await self.smime.pool.warm()
        self.pipeline = AcceptPipeline(self.engine, self.settings, self.cipher, smime=self.smime)
        self.authenticator = MailboxAuthenticator(self.engine, self.settings.local_domains)
        plain = server_context(server)
        self.server_context = plain
        listeners = {
            "submission": ListenerConfig("submission", "127.0.0.1", free_port(), plain, hostname="localhost"),
            "submissions": ListenerConfig("submission", "127.0.0.1", free_port(), plain, implicit_tls=True, hostname="localhost"),
            "mx": ListenerConfig(
                "mx", "127.0.0.1", free_port(), server_context(server, client_ca=self.ca.files.cert), hostname="localhost"
            ),
        }
        if trusted_networks:
            listeners["trusted"] = ListenerConfig(
                "submission", "127.0.0.1", free_port(), plain, trusted_networks=trusted_networks, hostname="localhost"
            )
        for name, config in listeners.items():
            for attempt in range(5):
                try:
                    self.servers.append(await start_listener(config, self.pipeline, self.authenticator))
                    break
                except OSError as exc:  # the port found free was taken before we bound it: take another
                    if exc.errno != errno.EADDRINUSE or attempt == 4:
                        raise
                    config = dataclasses.replace(config, port=free_port())
            self.ports[name] = config.port
        return self

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()
        await self.pipeline.close()

    def account(self, key: str) -> tuple[str, str]:
        entry = self.credentials["professionals"][key]
        return entry["address"], entry["password"]

    async def inbox(self, address: str, folder: str = "INBOX") -> list[bytes]:
        """The raw messages in a mailbox folder, in UID order (decrypted)."""
        from sqlalchemy import select

        from caducee.annuaire.models import Mailbox
        from caducee.mailbox.models import Folder, MailboxEntry, Message

        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(Message.body)
                .join(MailboxEntry, MailboxEntry.message_id == Message.id)
                .join(Folder, Folder.id == MailboxEntry.folder_id)
                .join(Mailbox, Mailbox.id == Folder.mailbox_id)
                .where(Mailbox.address == address.lower(), Folder.name == folder)
                .order_by(MailboxEntry.uid)
            )
            return [self.cipher.open(row.body) for row in rows]


@pytest.fixture(scope="session")
def smime_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with a master key, the test trust space and the demo mailboxes'
    S/MIME pairs; S/MIME tests start from a copy of it."""
    from caducee import demo

    directory = tmp_path_factory.mktemp("smime-template")
    settings = Settings(data_dir=directory / "var", database_url=f"sqlite:///{directory / 'seed.sqlite3'}")
    db.upgrade(settings.database_url)

    async def seed() -> None:
        engine = db.create_engine(settings.database_url)
        try:
            await demo.seed(engine, settings, certificates=True)
        finally:
            await engine.dispose()

    asyncio.run(seed())
    for leftover in ("demo-credentials.json", "caducee.sqlite3"):
        (settings.data_dir / leftover).unlink(missing_ok=True)
    return settings.data_dir


@pytest.fixture
async def gateway(engine: AsyncEngine, settings: Settings, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    running = await RunningGateway(engine, settings, tmp_path).start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def imap(gateway: RunningGateway, engine: AsyncEngine, settings: Settings) -> AsyncIterator[object]:
    """The IMAP listeners (STARTTLS and implicit TLS) beside the gateway, sharing its lock-out."""
    from caducee.imap.server import start_imap

    settings = dataclasses.replace(settings, imap_poll_seconds=0.2)
    server = await start_imap(
        settings,
        engine,
        gateway.cipher,
        gateway.server_context,
        authenticator=gateway.authenticator,
        host="127.0.0.1",
        imap_port=free_port(),
        imaps_port=free_port(),
    )
    gateway.ports["imap"] = server.servers[0].sockets[0].getsockname()[1]
    gateway.ports["imaps"] = server.servers[1].sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def openpgp_template(tmp_path_factory: pytest.TempPathFactory, smime_template: Path) -> Path:
    """The S/MIME template's data directory plus the operator's OpenPGP keyring (its passphrase
    derived from that master key) and two signers (the CNAM, someone else), made once per run."""
    from openpgp_helpers import make_template

    directory = tmp_path_factory.mktemp("openpgp-template")
    shutil.copytree(smime_template, directory / "var")
    return make_template(directory)


# The Pro Santé Connect stand-in and the portal pointed at it (tests/psc.py).
from psc import portal, standin  # noqa: E402, F401
