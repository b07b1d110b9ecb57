"""`make soak`: kill the PostgreSQL primary under an SMTP load and count what was kept.

A Patroni cluster (etcd, a primary and a synchronous standby, on loopback ports in a
temporary directory) serves one Caducée node, which is given the multi-host URL
(`target_session_attrs=read-write`). SMTP sessions submit messages without pause; after a
while the primary (Patroni and PostgreSQL) is SIGKILLed, like a machine losing power.
Meanwhile Caducée must answer 451 (never lose or refuse a message), reconnect by itself
to the promoted standby, and afterwards every message that got 250 must be stored, once.

Bounded: the load stops at `--after` seconds past the kill, or at `--deadline`. The figures
(load, failover time, acknowledged vs stored) go to docs/reliability.md, between this
script's markers. Exit 1 when an acknowledged message is missing or stored twice.

    .venv/bin/python soak/failover.py [--sessions 6] [--before 20] [--after 40] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import re
import smtplib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from nodes import start_node  # noqa: E402
from pgcluster import PatroniCluster, missing_tools  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Session:
    """One SMTP client: what got 250 (with when), how many 4xx and lost connections."""

    acknowledged: list[tuple[float, str]] = field(default_factory=list)
    temporary: list[float] = field(default_factory=list)  # 451 answers
    dropped: list[float] = field(default_factory=list)  # connection lost or refused
    permanent: list[str] = field(default_factory=list)  # 5xx: must stay empty


class Load:
    def __init__(self, port: int, sender: str, rcpt: str, sessions: int) -> None:
        self.port, self.sender, self.rcpt = port, sender, rcpt
        self.stopping = threading.Event()
        self.sessions = [Session() for _ in range(sessions)]
        self.counter = iter(range(10_000_000))
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(s,), daemon=True) for s in self.sessions]

    def next_tag(self) -> str:
        with self.lock:
            return f"<soak-{next(self.counter)}@demo.mssante.fr>"

    def run(self, session: Session) -> None:
        client: smtplib.SMTP | None = None
        while not self.stopping.is_set():
            tag = self.next_tag()
            data = (
                f"From: {self.sender}\r\nTo: {self.rcpt}\r\nSubject: soak\r\nDate: {formatdate()}\r\n"
                f"Message-ID: {tag}\r\n\r\nMessage de charge pendant la bascule.\r\n"
            ).encode()
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
                client.sendmail(self.sender, [self.rcpt], data)
                session.acknowledged.append((time.monotonic(), tag))
            except smtplib.SMTPResponseException as exc:
                (
                    session.permanent.append(f"{exc.smtp_code} {exc.smtp_error!r}")
                    if exc.smtp_code >= 500
                    else session.temporary.append(time.monotonic())
                )
                if exc.smtp_code < 500:
                    time.sleep(0.2)
                self._reset(client)
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                if any(code >= 500 for code in codes):
                    session.permanent.append(str(exc.recipients))
                else:
                    session.temporary.append(time.monotonic())
                    time.sleep(0.2)
                self._reset(client)
            except (OSError, smtplib.SMTPException):
                session.dropped.append(time.monotonic())
                client = None
                time.sleep(0.2)
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                pass

    @staticmethod
    def _reset(client: smtplib.SMTP | None) -> None:
        if client is not None:
            try:
                client.rset()
            except (OSError, smtplib.SMTPException):
                pass

    def acknowledged(self) -> list[tuple[float, str]]:
        return sorted(item for session in self.sessions for item in session.acknowledged)


def stored_tags(url: str) -> dict[str, int]:
    """Message-ID -> number of entries, read on the cluster's current primary."""
    import asyncio

    from sqlalchemy import func, select

    from caducee import db
    from caducee.mailbox.models import MailboxEntry, Message

    async def read() -> dict[str, int]:
        engine = db.create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(Message.message_id_header, func.count(MailboxEntry.id))
                    .join(MailboxEntry, MailboxEntry.message_id == Message.id)
                    .where(Message.message_id_header.like("<soak-%"))
                    .group_by(Message.id, Message.message_id_header)
                )
                counts: dict[str, int] = {}
                for header, entries in rows.all():
                    counts[header] = counts.get(header, 0) + entries
                return counts
        finally:
            await engine.dispose()

    return asyncio.run(read())


def create_database(cluster: PatroniCluster, name: str) -> str:
    import asyncio

    import asyncpg

    primary = cluster.primary()
    assert primary is not None

    async def create() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=primary.pg_port, user="postgres", database="postgres", timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return cluster.url(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=6, help="concurrent SMTP sessions")
    parser.add_argument("--before", type=float, default=20, help="seconds of load before the primary is killed")
    parser.add_argument("--after", type=float, default=40, help="seconds of load after Caducée accepts again")
    parser.add_argument("--deadline", type=float, default=240, help="the whole run stops by then, whatever happened")
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave docs/reliability.md as it is")
    args = parser.parse_args()
    missing = missing_tools("patroni", "etcd", "pgbouncer", "psql")
    if missing:
        print(f"missing: {', '.join(missing)}; install them with `make peers` (scripts/system-packages.sh)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="caducee-soak-") as scratch:
        root = Path(scratch)
        cluster = PatroniCluster(root / "cluster")
        node = None
        try:
            cluster.start()
            url = create_database(cluster, "caducee")
            print(
                f"cluster up in {time.monotonic() - started:.1f} s: primary {cluster.primary().name}, sync standby {cluster.sync_standby().name}"
            )
            node = start_node(root / "node", url, args=("--demo", "--role", "smtp,http"), wait_for=("http", "submission"), timeout=180)
            credentials = node.credentials()
            load = Load(
                node.ports["submission"],
                credentials["professionals"]["doctor"]["address"],
                credentials["professionals"]["nurse"]["address"],
                args.sessions,
            )
            for thread in load.threads:
                thread.start()
            time.sleep(args.before)
            victim = cluster.primary()
            assert victim is not None, "no primary before the kill"
            acknowledged_before = len(load.acknowledged())
            killed_at = time.monotonic()
            cluster.kill(victim)
            print(f"killed the primary {victim.name} after {acknowledged_before} acknowledged messages")
            promoted_at = None
            while time.monotonic() - started < args.deadline:
                if promoted_at is None:
                    new = cluster.primary()
                    if new is not None and new is not victim:
                        promoted_at = time.monotonic()
                        print(f"{new.name} promoted {promoted_at - killed_at:.1f} s after the kill")
                elif time.monotonic() - promoted_at >= args.after:
                    break
                time.sleep(0.2)
            load.stopping.set()
            stopped_at = time.monotonic()
            for thread in load.threads:
                thread.join(timeout=120)
            node_code = node.stop()
            node = None
            acknowledged = load.acknowledged()
            stored = stored_tags(url)
        finally:
            if node is not None:
                node.stop()
            cluster.stop()
    tags = [tag for _, tag in acknowledged]
    lost = [tag for tag in tags if tag not in stored]
    doubled = [tag for tag, entries in stored.items() if entries != 1]
    sessions = load.sessions
    temporary = sorted(at for s in sessions for at in s.temporary)
    dropped = sorted(at for s in sessions for at in s.dropped)
    permanent = [text for s in sessions for text in s.permanent]
    window = [at for at in temporary + dropped if at >= killed_at]
    # Clients see the failover from the first 451 (or lost connection) after the kill to the
    # first 250 after it; a 250 in the instant after the kill was committed before it.
    outage_began = min(window) if window else None
    accepting_at = next((at for at, _ in acknowledged if outage_began is not None and at > outage_began), None)
    before_rate = acknowledged_before / args.before
    after_tags = [at for at, _ in acknowledged if accepting_at is not None and at >= accepting_at]
    after_rate = len(after_tags) / max(stopped_at - accepting_at, 1) if accepting_at else 0.0
    figures = {
        "sessions": args.sessions,
        "acknowledged": len(tags),
        "stored": len(stored),
        "lost": len(lost),
        "doubled": len(doubled),
        "permanent": len(permanent),
        "temporary": len(temporary),
        "dropped": len(dropped),
        "promotion": (promoted_at - killed_at) if promoted_at else None,
        "failover": (accepting_at - killed_at) if accepting_at else None,
        "outage": (accepting_at - outage_began) if accepting_at and outage_began else None,
        "before_rate": before_rate,
        "after_rate": after_rate,
        "last_failure": (max(window) - killed_at) if window else None,
        "node_exit": node_code,
        "ttl": cluster.ttl,
    }
    print(figures)
    if not args.no_write:
        write(figures)
    ok = not lost and not doubled and not permanent and accepting_at is not None
    if not ok:
        print(
            f"FAILED: {len(lost)} acknowledged messages lost, {len(doubled)} stored twice, {len(permanent)} refused (5xx)", file=sys.stderr
        )
        for text in permanent[:5]:
            print("  refused:", text, file=sys.stderr)
    return 0 if ok else 1


def write(f: dict[str, object]) -> None:
    def seconds(value: object) -> str:
        return f"{value:.1f} s" if isinstance(value, float) else "never"

    body = f"""## PostgreSQL failover under SMTP load (`make soak`, soak/failover.py)

{platform.machine()}, {__import__("os").cpu_count()} cores shared with other work, {datetime.now(UTC):%Y-%m-%d}. Patroni 3 with
etcd 3.4: a primary and a synchronous standby (`synchronous_mode: true`, `ttl: {f["ttl"]}`,
`loop_wait: 2`) on loopback ports; one Caducée node (`serve --role smtp,http`) given the
multi-host URL `postgresql://…@h1:p1,h2:p2/caducee?target_session_attrs=read-write`;
{f["sessions"]} SMTP sessions submitting one message after another (S/MIME signed and encrypted,
as every message is), while the machine also ran other work (its load average was about 8 on
2 cores: the rates are low for that reason, the counts and times are what matter). The
primary, Patroni and PostgreSQL, was SIGKILLed mid-load.

| figure | value |
|---|---|
| acknowledged (250) | {f["acknowledged"]} |
| stored afterwards (each once) | {f["stored"]} |
| acknowledged but missing | **{f["lost"]}** |
| stored more than once | **{f["doubled"]}** |
| refused permanently (5xx) | {f["permanent"]} |
| 451 answers meanwhile | {f["temporary"]} |
| connections lost or refused meanwhile | {f["dropped"]} |
| standby promoted after the kill | {seconds(f["promotion"])} |
| first 250 after the outage began, from the kill (failover seen by clients) | {seconds(f["failover"])} |
| from the first 451 to the next 250 | {seconds(f["outage"])} |
| load before the kill | {f["before_rate"]:.0f} messages/s |
| load after the failover | {f["after_rate"]:.0f} messages/s |

Stored may exceed acknowledged: a message committed just before its session lost its
connection was never acknowledged, and the client sends it again under a new Message-ID
(allowed: what got 250 is what must be kept). The promotion time is Patroni's: the dead
leader's key expires after `ttl`, then the standby takes over; Caducée reconnects by itself
(the pool discards the dead connections; asyncpg tries the hosts in turn until one accepts
writes) and answers 451 in the meantime.
"""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Reliability\n"
    begin, end = "<!-- begin soak-failover -->", "<!-- end soak-failover -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
