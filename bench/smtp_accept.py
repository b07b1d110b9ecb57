"""Benchmark: SMTP accept rate of Caducée against a bare aiosmtpd sink and against Postfix.

Postfix's `smtp-source` sends the same load (default 5,000 messages of 10 KB over 20
parallel sessions, one message per connection) to
  (a) a bare aiosmtpd sink (accepts, keeps nothing: the floor of our stack),
  (b) Caducée with every rule and at-rest encryption on, `--workers 2`, on SQLite and on
      PostgreSQL, through a trusted-network submission listener so the same client drives all,
  (c) Postfix, configured here on a loopback port as a relay into `smtp-sink`: a durable
      queue that fsyncs each message before its 250, the anchor.
Also Caducée's rate over STARTTLS + AUTH with a Python client (aiosmtplib, 20 sessions
each sending several messages). Medians of --repeat runs; peak RSS of Caducée's workers.

    .venv/bin/python bench/smtp_accept.py [--messages 5000] [--repeat 3] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database, free_port  # noqa: E402
from postfix_anchor import PostfixRelay  # noqa: E402
from report import machine, median, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"
SENDER = "sophie.bernard@demo.mssante.fr"
RECIPIENT = "285037512345688@patient.mssante.fr"


def wait_port(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def smtp_source(port: int, messages: int, sessions: int, size: int, recipient: str = RECIPIENT) -> float:
    """Messages per second that smtp-source achieved against 127.0.0.1:port."""
    start = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", SENDER, "-t", recipient, f"127.0.0.1:{port}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return messages / (time.perf_counter() - start)


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def tree_of(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, todo = [pid], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int], serving: list[int]) -> dict[str, float]:
    """CPU time (user + system) so far of each kind of process: serving, CPU pool, other."""
    out = {"serving": 0.0, "cpu pool": 0.0, "other": 0.0}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        if b"cpuworker" in cmdline or b"forkserver" in cmdline or b"multiprocessing" in cmdline:
            out["cpu pool"] += seconds
        elif b"caducee" in cmdline and (b"--worker-process" in cmdline or b"--workers 1" in cmdline.replace(b"\0", b" ")):
            out["serving"] += seconds
        else:
            out["other"] += seconds
    return out


def measured(caducee: Caducee, run: Callable[[], float], messages: int, cpu: dict[str, list[float]], key: str) -> float:
    """Run the load; record the CPU milliseconds per message each kind of process spent."""
    serving = caducee.workers()
    before = cpu_seconds(tree_of(caducee.process.pid), serving)
    rate = run()
    after = cpu_seconds(tree_of(caducee.process.pid), serving)
    for kind in before:
        cpu.setdefault(f"{key}|{kind}", []).append(1000 * (after[kind] - before[kind]) / messages)
    return rate


class Caducee:
    """`caducee serve --demo --workers N` in a data dir of its own."""

    def __init__(self, workdir: Path, database_url: str, workers: int, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = workdir / f"caducee-{uuid.uuid4().hex[:6]}"
        self.port, self.tls_port = free_port(), free_port()
        env = {
            **os.environ,
            "CADUCEE_DATA_DIR": str(self.data_dir),
            "CADUCEE_DATABASE_URL": database_url,
            "CADUCEE_SUBMISSION_PORT": str(self.port),
            "CADUCEE_SUBMISSIONS_PORT": str(self.tls_port),
            "CADUCEE_MX_PORT": "0",
            "CADUCEE_IMAP_PORT": "0",
            "CADUCEE_IMAPS_PORT": "0",
            "CADUCEE_HTTP_PORT": str(free_port()),
            "CADUCEE_TRUSTED_NETWORKS": "127.0.0.0/8",
            "CADUCEE_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "caducee", "serve", "--demo", "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "caducee.log", "ab"),
        )
        wait_port(self.port)
        wait_port(self.tls_port)
        self.credentials = self._credentials()

    def _credentials(self) -> dict:  # type: ignore[type-arg]
        """The demo's credentials, which it may write after its listeners are open."""
        path = self.data_dir / "demo-credentials.json"
        deadline = time.monotonic() + 60
        while True:
            try:
                return json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def workers(self) -> list[int]:
        """The serving processes: the `--worker-process` children, or the process itself with
        one worker (its other children are the CPU pool's, which serve no connection)."""
        serving = [pid for pid in children_of(self.process.pid) if b"--worker-process" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        return serving or [self.process.pid]

    def stop(self) -> float:
        rss = peak_rss_mb(self.workers())
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return rss


async def tls_auth_rate(caducee: Caducee, messages: int, sessions: int, size: int) -> float:
    """Messages/s over STARTTLS + AUTH PLAIN, each session reusing its connection."""
    import aiosmtplib

    password = caducee.credentials["professionals"]["doctor"]["password"]
    context = ssl.create_default_context(cafile=str(caducee.data_dir / "pki" / "anchors.pem"))
    body = ("Compte rendu de consultation, ligne de texte pour atteindre la taille voulue.\r\n" * (size // 80)).encode()
    per_session = messages // sessions

    async def session(n: int) -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=caducee.port, start_tls=True, tls_context=context) as client:
            await client.login(SENDER, password)
            for i in range(per_session):
                head = f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {n}-{i}\r\nMessage-ID: <b{n}-{i}-{uuid.uuid4().hex}@demo.mssante.fr>\r\n\r\n"
                await client.sendmail(SENDER, [RECIPIENT], head.encode() + body)

    start = time.perf_counter()
    await asyncio.gather(*(session(n) for n in range(sessions)))
    return per_session * sessions / (time.perf_counter() - start)


PROFILE_FRAMES = [
    ("aiosmtpd protocol handling (commands, replies, connection set-up)", ("SMTP._handle_client", "_accept_connection")),
    ("  of which our DATA hook: the accept pipeline", ("GatewayHandler.handle_DATA",)),
    ("    message inspection (parse, hostile-input checks)", ("AcceptPipeline._inspect",)),
    ("    waiting for / running the group commit", ("GroupCommitter._commit",)),
    ("  of which the RCPT and MAIL hooks (rules at RCPT, directory cache)", ("GatewayHandler.handle_RCPT", "GatewayHandler.handle_MAIL")),
    ("SQLite writer thread (batch statements, commit, fsync)", ("BatchWriter._write_sqlite",)),
    (
        "hand-off to the CPU pool (S/MIME jobs: pickling, queue and result threads)",
        ("concurrent/futures/process.py", "multiprocessing/queues.py", "multiprocessing/connection.py", "CpuPool.run"),
    ),
    ("event loop and socket I/O outside the handlers", ("_SelectorSocketTransport", "Loop.run_forever", "uvloop")),
]


def profile_worker(workdir: Path, messages: int, sessions: int, size: int) -> str:
    """Sample one Caducée worker with py-spy under the same load; the share of each part."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "(py-spy not installed: no profile)"
    caducee = Caducee(workdir, f"sqlite:///{workdir / 'profile.sqlite3'}", 1)
    raw = workdir / "profile.txt"
    try:
        load = subprocess.Popen(
            [
                "smtp-source",
                "-s",
                str(sessions),
                "-m",
                str(messages),
                "-l",
                str(size),
                "-f",
                SENDER,
                "-t",
                RECIPIENT,
                f"127.0.0.1:{caducee.port}",
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1)
        subprocess.run(
            [spy, "record", "-p", str(caducee.workers()[0]), "-d", "6", "-f", "raw", "-o", str(raw), "--threads"],
            capture_output=True,
            check=False,
        )
        load.wait()
    finally:
        caducee.stop()
    if not raw.exists():
        return "(py-spy could not sample the worker)"
    total = 0
    counts = {label: 0 for label, _ in PROFILE_FRAMES}
    idle_leaves = ("_connection_worker_thread (aiosqlite/core.py:59)", "_worker (concurrent/futures/thread.py:81)", "Condition.wait")
    top_level = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if any(leaf in stack.rsplit(";", 1)[-1] for leaf in idle_leaves):
            continue  # a pool thread waiting for work: idle, not busy
        total += int(n)
        matched = False
        for label, needles in PROFILE_FRAMES:
            if any(needle in stack for needle in needles):
                counts[label] += int(n)
                matched = matched or not label.startswith(" ")
        top_level += int(n) if matched else 0
    counts["everything else (the loop's own callbacks, logging, group-commit bookkeeping)"] = total - top_level
    rows = [f"| {label} | {100 * count / max(total, 1):.0f}% |" for label, count in counts.items()]
    return "| part of one worker's busy time (py-spy, all threads) | share |\n|---|---|\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--no-tls", action="store_true", help="skip the STARTTLS + AUTH line")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for tool in ("smtp-source", "smtp-sink", "postfix"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `bash scripts/system-packages.sh` (Debian package postfix)")
    results: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="caducee-smtp-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        sink_port, postfix_port, bare_port = free_port(), free_port(), free_port()
        sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-c", f"127.0.0.1:{sink_port}", "500"], stdout=subprocess.DEVNULL)
        bare = subprocess.Popen([sys.executable, str(Path(__file__).parent / "aiosmtpd_sink.py"), str(bare_port)])
        postfix = PostfixRelay(workdir, postfix_port, sink_port)
        postfix.start()
        wait_port(bare_port)
        pg_names: list[str] = []
        try:
            for attempt in range(args.repeat):
                results.setdefault("aiosmtpd sink", []).append(smtp_source(bare_port, args.messages, args.sessions, args.size))
                results.setdefault("Postfix (relay to smtp-sink)", []).append(
                    smtp_source(postfix_port, args.messages, args.sessions, args.size)
                )
                for backend in args.backends.split(","):
                    if backend == "sqlite":
                        url = f"sqlite:///{workdir / f'bench-{attempt}.sqlite3'}"
                    else:
                        name, url = create_pg_database(args.pg, "caducee_smtpbench")
                        pg_names.append(name)
                    caducee = Caducee(workdir, url, args.workers)
                    try:
                        key = f"Caducée {backend}, --workers {args.workers}"
                        load = functools.partial(smtp_source, caducee.port, args.messages, args.sessions, args.size)
                        results.setdefault(key, []).append(measured(caducee, load, args.messages, cpu, key))
                        if backend == "sqlite" and not args.no_tls:
                            results.setdefault("Caducée sqlite, STARTTLS + AUTH (aiosmtplib)", []).append(
                                asyncio.run(tls_auth_rate(caducee, args.messages // 2, args.sessions, args.size))
                            )
                    finally:
                        rss.setdefault(key, []).append(caducee.stop())
                print({k: f"{v[-1]:.0f}" for k, v in results.items()}, flush=True)
        finally:
            postfix.stop()
            sink.terminate()
            bare.terminate()
            for name in pg_names:
                drop_pg_database(args.pg, name)

        profile = "" if args.no_profile else profile_worker(workdir, min(args.messages, 3000), args.sessions, args.size)
    postfix_rate = median(results["Postfix (relay to smtp-sink)"])
    cpu_lines = []
    for key in results:
        if f"{key}|serving" in cpu:
            parts = [median(cpu[f"{key}|{kind}"]) for kind in ("serving", "cpu pool", "other")]
            cpu_lines.append(f"| {key} | {parts[0]:.2f} | {parts[1]:.2f} | {parts[2]:.2f} | {sum(parts):.2f} |")
    lines = []
    for key, values in results.items():
        rate = median(values)
        memory = f"{median(rss[key]):.0f} MB" if key in rss else ""
        lines.append(f"| {key} | {rate:,.0f} | {rate / postfix_rate:.2f}x | {memory} |")
    body = (
        f"""## SMTP accept rate (`bench/smtp_accept.py`)

Command: `.venv/bin/python bench/smtp_accept.py --messages {args.messages} --repeat {args.repeat}` ({machine()}).
`smtp-source -s {args.sessions} -m {args.messages} -l {args.size}` (one message per connection) against each server on
loopback; Caducée runs `caducee serve --demo --workers {args.workers}` with the rules, S/MIME (each message signed with the
operator's certificate; the patient's key is held, so no envelope) and at-rest encryption on, a "250" only after the
group commit; Postfix relays into `smtp-sink` with its own durable queue. The STARTTLS + AUTH line is
{args.messages // 2} messages from 20 aiosmtplib sessions that each log in once. Medians of {args.repeat} runs.
Target: Caducée >= 1.0x Postfix; below 0.6x the gateway issue is not done.

| server | messages/s | vs Postfix | peak RSS (all workers) |
|---|---|---|---|
"""
        + "\n".join(lines)
        + f"""

Where the time goes: one worker on SQLite under the same load, sampled by py-spy (shares of its busy samples;
nested lines are part of the line above). The SMTP protocol layer (aiosmtpd on uvloop) is most of it; a bare aiosmtpd
sink in one process is itself slower than Postfix, which is why the gateway runs one worker per core.

{profile}

CPU time per message (milliseconds, medians; user + system from /proc, every process of the server's tree; the
serving processes run the SMTP sessions and the pipeline, the CPU pool the S/MIME jobs; smtp-source and the database
server are not counted):

| server | serving processes | CPU pool | other (parent, PSC stand-in) | total |
|---|---|---|---|---|
"""
        + "\n".join(cpu_lines)
        + """

Peak RSS is dominated by argon2id password checks (64 MiB each, at most two at a time per worker) when clients log in;
under trusted-network load a worker stays near 115 MB."""
    )
    print(body)
    if not args.no_write:
        write_section("smtp_accept", body)


if __name__ == "__main__":
    main()
