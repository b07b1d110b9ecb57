"""Benchmark: Caducée's IMAP server against Dovecot on the same 10,000-message mailbox.

Both servers are started here on loopback ports (Dovecot from Debian's dovecot-imapd, with
a configuration of its own written by this script: Maildir, a passwd-file, TLS with a
throw-away certificate) and filled with the same generated messages by pipelined APPENDs.
The same minimal client (raw socket, STARTTLS, LOGIN; it reads each response up to its
tagged line and parses nothing, so the client costs both servers the same) then times:

  SELECT INBOX
  UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)
  UID SEARCH UNSEEN            (flags: about 70% of the messages are \\Seen)
  UID SEARCH FROM "dupont"     (a header: about 10% match)
  UID FETCH 1:500 (BODY.PEEK[])

Throughput is operations per second (the median of --repeat timings); the ratio is
Caducée's throughput over Dovecot's. Then 1,000 connections log in, SELECT INBOX and sit
in IDLE on Caducée: the serving process's resident memory per connection is the growth of
its RSS divided by the number of connections (after 20 warm-up connections).

    .venv/bin/python bench/imap.py [--messages 10000] [--repeat 5] [--idle 1000] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database, free_port  # noqa: E402
from report import machine, median, write_section  # noqa: E402
from smtp_accept import DEFAULT_PG, Caducee, wait_port  # noqa: E402

OPERATIONS = {
    "SELECT INBOX": "SELECT INBOX",
    "UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)": "UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE)",
    "UID SEARCH UNSEEN": "UID SEARCH UNSEEN",
    'UID SEARCH FROM "dupont"': 'UID SEARCH FROM "dupont"',
    "UID FETCH 1:500 (BODY.PEEK[])": "UID FETCH 1:500 (BODY.PEEK[])",
}
NAMES = ["Dupont", "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Leroy", "Moreau"]


def messages(count: int, seed: int = 7) -> list[bytes]:
    """Realistic mail: mostly short text, some multipart/alternative, some with a PDF attachment."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for n in range(count):
        mail = EmailMessage()
        name = NAMES[n % len(NAMES)]
        mail["From"] = f"Dr {name} <dr.{name.lower()}@hopital-{n % 17}.mssante.fr>"
        mail["To"] = "Sophie Bernard <sophie.bernard@demo.mssante.fr>"
        mail["Subject"] = f"Compte rendu n°{n} — patient {rng.randint(1000, 9999)}"
        mail["Date"] = format_datetime(start + timedelta(minutes=37 * n))
        mail["Message-ID"] = f"<bench-{n}@hopital.mssante.fr>"
        text = "\n".join(
            f"Ligne {i} du compte rendu : examen normal, à revoir dans {rng.randint(1, 12)} mois." for i in range(rng.randint(10, 60))
        )
        mail.set_content(text)
        kind = n % 10
        if kind in (1, 2):
            mail.add_alternative(f"<html><body><p>{text.replace(chr(10), '<br>')}</p></body></html>", subtype="html")
        elif kind == 3:
            mail.add_attachment(rng.randbytes(20_000), maintype="application", subtype="pdf", filename=f"cr-{n}.pdf")
        out.append(mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    return out


class RawClient:
    """STARTTLS, LOGIN, then commands whose responses are read up to the tagged line, unparsed."""

    def __init__(self, port: int, user: str, password: str, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.buffer = b""
        self.counter = 0
        self._line()
        self.run("STARTTLS")
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.run(f'LOGIN "{user}" "{password}"')

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def tag(self) -> bytes:
        self.counter += 1
        return b"T%06d" % self.counter

    def run(self, command: str) -> int:
        """Send one command, wait for its tagged OK; the number of response bytes."""
        tag = self.tag()
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        return self.wait(tag)

    def wait(self, tag: bytes) -> int:
        marker = b"\r\n" + tag + b" "
        received = 0
        data = b"\r\n" + self.buffer
        while marker not in data or b"\r\n" not in data.split(marker, 1)[1]:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            received += len(chunk)
            data = data[-(len(marker) + 512) :] + chunk if len(data) > 1 << 16 else data + chunk
        after = data.split(marker, 1)[1]
        status, _, rest = after.partition(b"\r\n")
        if not status.startswith(b"OK"):
            raise RuntimeError(f"{tag.decode()} {status[:200]!r}")
        self.buffer = rest
        return received

    def append_all(self, folder: str, raws: list[bytes], batch: int = 200) -> None:
        """Pipelined APPENDs with non-synchronising literals (LITERAL+, both servers have it)."""
        for start in range(0, len(raws), batch):
            tags = []
            payload = bytearray()
            for raw in raws[start : start + batch]:
                tag = self.tag()
                tags.append(tag)
                payload += tag + b" APPEND %s {%d+}\r\n" % (folder.encode(), len(raw)) + raw + b"\r\n"
            self.sock.sendall(payload)
            for tag in tags:
                self.wait(tag)

    def close(self) -> None:
        try:
            self.run("LOGOUT")
        except (ConnectionError, RuntimeError, OSError):
            pass
        self.sock.close()


def prepare(client: RawClient, raws: list[bytes]) -> None:
    client.append_all("INBOX", raws)
    client.run("SELECT INBOX")
    # \Seen on 7 of every 10 UIDs
    ranges = [f"{base + 1}:{base + 7}" for base in range(0, len(raws), 10)]
    for start in range(0, len(ranges), 1000):
        client.run("UID STORE " + ",".join(ranges[start : start + 1000]) + " +FLAGS.SILENT (\\Seen)")
    client.run("UNSELECT")


def time_operations(client: RawClient, repeat: int) -> dict[str, float]:
    """Median seconds per operation (the folder is selected first, except for SELECT itself)."""
    out = {}
    for label, command in OPERATIONS.items():
        timings = []
        for _ in range(repeat):
            if label != "SELECT INBOX":
                client.run("SELECT INBOX")
            start = time.perf_counter()
            client.run(command)
            timings.append(time.perf_counter() - start)
        out[label] = median(timings)
    return out


class Dovecot:
    """Dovecot on loopback with a configuration of its own: STARTTLS on `port`, and implicit
    TLS on `tls_port` when asked (imaptest has no STARTTLS)."""

    def __init__(self, workdir: Path, user: str, password: str, *, implicit_tls: bool = False, name: str = "dovecot") -> None:
        self.root = workdir / name
        (self.root / "home").mkdir(parents=True)
        self.port = free_port()
        self.tls_port = free_port() if implicit_tls else 0
        cert, key = self.root / "cert.pem", self.root / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )
        (self.root / "users").write_text(f"{user}:{{PLAIN}}{password}\n")
        shutil.chown(self.root / "home", "dovecot", "dovecot")
        self.config = self.root / "dovecot.conf"
        self.config.write_text(f"""
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.root}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={self.root}/home/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
first_valid_gid = 1
default_internal_user = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.tls_port}
    ssl = yes
  }}
}}
""")
        self.process = subprocess.Popen(["dovecot", "-F", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port, 30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def idle_memory(port: int, user: str, password: str, count: int, pid: int) -> tuple[float, int]:
    """(KB of resident memory per connection in IDLE, connections that reached IDLE)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(50)

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            await reader.readline()
            writer.write(b"a STARTTLS\r\n")
            await reader.readline()
            await writer.start_tls(context, server_hostname="localhost")
            for command, tag in ((f'b LOGIN "{user}" "{password}"', b"b "), ("c SELECT INBOX", b"c ")):
                writer.write(command.encode() + b"\r\n")
                while True:
                    line = await reader.readline()
                    if line.startswith(tag):
                        if b" OK" not in line:
                            raise RuntimeError(line.decode())
                        break
            writer.write(b"d IDLE\r\n")
            while not (await reader.readline()).startswith(b"+"):
                pass
            return reader, writer

    warm = await asyncio.gather(*(one() for _ in range(20)))
    await asyncio.sleep(2)
    before = rss_kb(pid)
    rest = await asyncio.gather(*(one() for _ in range(count - 20)))
    await asyncio.sleep(3)
    after = rss_kb(pid)
    connections = warm + rest
    for _, writer in connections:
        writer.close()
    return (after - before) / len(rest), len(connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--imaptest", default=os.environ.get("IMAPTEST", ""), help="a built imaptest (tree or binary): the concurrent section"
    )
    parser.add_argument("--stress", type=int, default=30, help="seconds of each imaptest stress run")
    parser.add_argument("--stress-repeat", type=int, default=3, help="stress runs per server, interleaved (median taken)")
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("dovecot") is None:
        raise SystemExit("dovecot is missing: run `bash scripts/system-packages.sh` (Debian package dovecot-imapd)")
    raws = messages(args.messages)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    results: dict[str, dict[str, float]] = {}
    idle: dict[str, tuple[float, int]] = {}
    with tempfile.TemporaryDirectory(prefix="caducee-imap-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        user, password = "sophie.bernard@demo.mssante.fr", "motdepasse-banc-d-essai"
        dovecot = Dovecot(workdir, user, password)
        try:
            client = RawClient(dovecot.port, user, password, context)
            started = time.perf_counter()
            prepare(client, raws)
            print(f"Dovecot filled in {time.perf_counter() - started:.1f} s", flush=True)
            results["Dovecot"] = time_operations(client, args.repeat)
            client.close()
        except Exception:
            print((dovecot.root / "dovecot.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            dovecot.stop()
        for backend in args.backends.split(","):
            pg_name = None
            if backend == "sqlite":
                url = f"sqlite:///{workdir / 'imap-bench.sqlite3'}"
            else:
                pg_name, url = create_pg_database(args.pg, "caducee_imapbench")
            imap_port = free_port()
            caducee = Caducee(
                workdir, url, 1, {"CADUCEE_IMAP_PORT": str(imap_port), "CADUCEE_IMAP_MAX_CONNECTIONS_PER_CLIENT": str(args.idle + 100)}
            )
            try:
                wait_port(imap_port)
                nurse = caducee.credentials["professionals"]["nurse"]
                client = RawClient(imap_port, nurse["address"], nurse["password"], context)
                started = time.perf_counter()
                prepare(client, raws)
                print(f"Caducée {backend} filled in {time.perf_counter() - started:.1f} s", flush=True)
                results[f"Caducée {backend}"] = time_operations(client, args.repeat)
                client.close()
                if args.idle:
                    idle[backend] = asyncio.run(
                        idle_memory(imap_port, nurse["address"], nurse["password"], args.idle, caducee.workers()[0])
                    )
            finally:
                caducee.stop()
                if pg_name:
                    drop_pg_database(args.pg, pg_name)
            print(results, idle, flush=True)

    dovecot_times = results["Dovecot"]
    header = "| operation | Dovecot ops/s | " + " | ".join(f"{name} ops/s | vs Dovecot" for name in results if name != "Dovecot") + " |"
    rule = "|---|---|" + "---|---|" * (len(results) - 1)
    rows = []
    for label in OPERATIONS:
        cells = [f"`{label}`", f"{1 / dovecot_times[label]:,.1f}"]
        for name, times in results.items():
            if name != "Dovecot":
                cells += [f"{1 / times[label]:,.1f}", f"**{dovecot_times[label] / times[label]:.2f}x**"]
        rows.append("| " + " | ".join(cells) + " |")
    idle_lines = "\n".join(
        f"- Caducée {backend}: {count} connections in IDLE, **{per:.0f} KB** of resident memory each"
        for backend, (per, count) in idle.items()
    )
    # The concurrent section's options, with a placeholder for the local imaptest build (docs/imap.md).
    imaptest_args = (
        f" --imaptest PATH --stress {args.stress} --stress-repeat {args.stress_repeat} --clients {args.clients}" if args.imaptest else ""
    )
    body = (
        f"""## IMAP against Dovecot (`bench/imap.py`)

Command: `.venv/bin/python bench/imap.py --messages {args.messages} --repeat {args.repeat} --idle {args.idle}{imaptest_args}` ({machine()}).
A {args.messages:,}-message INBOX (generated: 70% short text, 20% multipart/alternative, 10% with a 20 KB PDF; 70%
\\Seen) in Dovecot {subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.split()[0]} (Maildir, TLS)
and in Caducée (`caducee serve --demo --workers 1`, bodies sealed at rest, summaries precomputed), both filled by
the same pipelined APPENDs and timed by the same raw client over STARTTLS. Medians of {args.repeat} timings.
A repeated SELECT of an unchanged folder is served from the process's shared snapshot (no entry read); the first
SELECT after a change reads the folder's entries (0.76x to 0.85x of Dovecot in runs before that cache existed).
Likewise the first header SEARCH of a folder in a process reads every summary (0.13x to 0.16x of Dovecot when cold);
the following ones read the header cache, as Dovecot reads its own cache file.
Target: >= 0.5x Dovecot's throughput on each operation; IDLE under 100 KB per connection.

{header}
{rule}
"""
        + "\n".join(rows)
        + f"""

Memory in IDLE (growth of the serving process's RSS over {args.idle} connections that logged in over STARTTLS,
selected INBOX and entered IDLE, divided by their number):

{idle_lines}
"""
    )
    if args.imaptest:
        body += "\n" + concurrent_section(args)
    else:
        body += "\n(The concurrent section needs a built imaptest: `--imaptest PATH`, see `bench/imaptest.py`.)\n"
    print(body)
    if not args.no_write:
        write_section("imap", body)


def concurrent_section(args: argparse.Namespace) -> str:
    """imaptest's stress mode (random commands from `clients` connections on one mailbox,
    state checked every second) against Dovecot and Caducée, runs interleaved."""
    from imaptest import Imaptest, caducee_target, dovecot_target, stress, write_mbox

    imaptest = Imaptest.locate(args.imaptest)
    servers = ["dovecot", *args.backends.split(",")]
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="caducee-imap-stress-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        mbox = write_mbox(workdir / "stress.mbox")
        for _ in range(args.stress_repeat):
            for name in servers:
                context = dovecot_target(workdir) if name == "dovecot" else caducee_target(workdir, name, args.pg)
                with context as target:
                    result = stress(imaptest, target, mbox, seconds=args.stress, clients=args.clients)
                runs[name].append((result.per_second, len(result.state_errors)))
                print(f"stress {name}: {result.per_second:.0f} operations/s, {len(result.state_errors)} errors", flush=True)
                for error in result.state_errors[:5]:
                    print("   ", error)
    dovecot = median([rate for rate, _ in runs["dovecot"]])
    rows = []
    for name in servers:
        rate = median([rate for rate, _ in runs[name]])
        errors = sum(count for _, count in runs[name])
        label = "Dovecot" if name == "dovecot" else f"Caducée {name}"
        ratio = "" if name == "dovecot" else f"**{rate / dovecot:.2f}x**"
        rows.append(f"| {label} | {rate:,.0f} | {ratio} | {errors} |")
    return (
        f"""Concurrent clients: imaptest's stress mode (`clients={args.clients} checkpoint=1 secs={args.stress}`, its default
command mix: LOGIN, LIST, STATUS, SELECT, FETCH, UID FETCH, STORE, EXPUNGE, APPEND, LOGOUT on one mailbox, every
client checking each second that all agree on its state), against Dovecot and Caducée in turn, {args.stress_repeat} runs each,
interleaved; operations/s is imaptest's count of completed commands over the run, the median of the runs; errors
are every `Error:` line imaptest printed (state errors, bad replies, disconnects), summed over the runs.
Target: >= 0.5x Dovecot's operations/s with 0 errors.

| server | operations/s | vs Dovecot | errors |
|---|---|---|---|
"""
        + "\n".join(rows)
        + "\n"
    )


if __name__ == "__main__":
    main()
