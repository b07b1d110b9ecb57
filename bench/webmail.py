"""Benchmark: the webmail's inbox and conversation pages under 50 concurrent users.

`caducee serve --demo --workers 2` (S/MIME on) on SQLite and on PostgreSQL; the demo
patient's mailbox is filled with --conversations conversations by Postfix's smtp-source
through a trusted-network submission port; a session is opened through the two login
steps (the code read from var/outbox). Then wrk (Debian's package) drives, with that
session cookie, 50 connections for --seconds, as 50 users clicking every 0.5 s and back to
back (the most the server can take), on:
  - the inbox page (`/`: the 20 most recent of the 1,000 conversations),
  - one conversation page (`/conversations/<id>`: opened, decrypted, rendered, the read
    recorded in the access history),
and, as the anchor, a bare uvicorn app (same server, same loop, same HTTP parser) that
returns a fixed page of the inbox page's size: the floor of the stack. Medians of --repeat
runs of p50, p99 and requests/s. Target: p99 < 100 ms.

    .venv/bin/python bench/webmail.py [--conversations 1000] [--seconds 10] [--repeat 3] [--workers 2] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import create_pg_database, drop_pg_database, free_port, pg_admin  # noqa: E402
from report import machine, median, write_section  # noqa: E402
from smtp_accept import wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"
CONNECTIONS = 50

ANCHOR_APP = """
import os
from pathlib import Path
PAGE = Path(os.environ["ANCHOR_PAGE"]).read_bytes()
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(PAGE)).encode())]})
    await send({"type": "http.response.body", "body": PAGE})
"""


def wrk(url: str, seconds: int, cookie: str | None = None, think_ms: int = 0) -> dict[str, float]:
    """p50 and p99 in milliseconds, requests per second, and non-2xx answers.

    `think_ms`: each of the 50 users waits that long on average after an answer before the
    next click (wrk's `delay()` hook; the wait is not counted in the latency). 0: back to
    back, which measures the most the server can take.
    """
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if cookie:
        command += ["-H", f"Cookie: {cookie}"]
    if think_ms:
        # A random pause (uniform, mean `think_ms`): with a fixed one the 50 users stay in step
        # and arrive as one burst of 50 every pause, which no crowd of real people does.
        script = Path(tempfile.gettempdir()) / f"wrk-think-{think_ms}.lua"
        script.write_text(f"math.randomseed(os.time())\nfunction delay()\n  return math.random(0, {2 * think_ms})\nend\n")
        command += ["-s", str(script)]
    out = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout

    def milliseconds(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "p50": milliseconds("50"),
        "p99": milliseconds("99"),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "errors": float(errors.group(1)) if errors else 0.0,
    }


class Caducee:
    def __init__(self, directory: Path, database_url: str, workers: int = 1) -> None:
        self.directory = directory
        self.workers = workers
        self.http_port, self.smtp_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "CADUCEE_DATA_DIR": str(directory / "var"),
            "CADUCEE_DATABASE_URL": database_url,
            "CADUCEE_HTTP_PORT": str(self.http_port),
            "CADUCEE_SUBMISSION_PORT": str(self.smtp_port),
            "CADUCEE_SUBMISSIONS_PORT": "0",
            "CADUCEE_MX_PORT": "0",
            "CADUCEE_IMAP_PORT": "0",
            "CADUCEE_IMAPS_PORT": "0",
            "CADUCEE_TRUSTED_NETWORKS": "127.0.0.0/8",
            "CADUCEE_LOG_LEVEL": "WARNING",
            "CADUCEE_WEBMAIL_COOKIE_SECURE": "false",
            "CADUCEE_WEBMAIL_IDLE_MINUTES": "120",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "caducee", "serve", "--demo", "--workers", str(self.workers)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.http_port)
        wait_port(self.smtp_port)
        credentials = self.directory / "var" / "demo-credentials.json"
        deadline = time.monotonic() + 60
        while not credentials.exists():  # the demo may write it after its listeners open
            if time.monotonic() > deadline:
                raise RuntimeError(f"{credentials} did not appear")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    @property
    def credentials(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.directory / "var" / "demo-credentials.json").read_text())

    def fill(self, conversations: int) -> None:
        """One new conversation per message: smtp-source gives each its own Message-ID."""
        doctor = self.credentials["professionals"]["doctor"]["address"]
        patient = self.credentials["patients"]["adult_1"]["address"]
        subprocess.run(
            [
                "smtp-source",
                "-s",
                "10",
                "-m",
                str(conversations),
                "-l",
                "2000",
                "-f",
                doctor,
                "-t",
                patient,
                "-S",
                "Compte rendu de consultation",
                f"127.0.0.1:{self.smtp_port}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def session_cookie(self) -> str:
        from webmail_client import form_token, latest_code

        patient = self.credentials["patients"]["adult_1"]
        with httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=30) as client:
            csrf = form_token(client.get("/connexion").text)
            client.post("/connexion", data={"csrf": csrf, "identifiant": patient["ins"], "mot_de_passe": patient["password"]})
            client.post("/connexion/code", data={"csrf": csrf, "code": latest_code(self.directory / "var" / "outbox", patient["email"])})
            token = client.cookies.get("caducee_session")
            assert token, "login failed"
            listing = client.get("/api/v1/conversations").json()
            assert listing["total"] >= 1000 or listing["total"] > 0, listing
            self.conversation = listing["items"][len(listing["items"]) // 2]["id"]
            self.inbox_size = len(client.get("/").content)
            return f"caducee_session={token}"


def anchor(page_size: int, seconds: int, directory: Path) -> dict[str, float]:
    (directory / "anchor_app.py").write_text(ANCHOR_APP)
    page = directory / "anchor.html"
    page.write_bytes(b"x" * page_size)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "anchor_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ],
        cwd=directory,
        env={**os.environ, "ANCHOR_PAGE": str(page)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        wrk(f"http://127.0.0.1:{port}/", 2)  # warm-up
        return wrk(f"http://127.0.0.1:{port}/", seconds)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


LOADS = {"users": "50 users, a click every 0.5 s each (on average)", "saturation": "50 connections back to back"}
PAGES = {"inbox": "inbox page `/`", "conversation": "conversation page"}


def run_backend(backend: str, args: argparse.Namespace) -> dict[tuple[str, str], list[dict[str, float]]]:
    directory = Path(tempfile.mkdtemp(prefix=f"bench-webmail-{backend}-"))
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'caducee.sqlite3'}"
    else:
        pg_name, url = create_pg_database(args.pg, "bench_webmail")
    server = Caducee(directory, url, args.workers)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        server.start()
        print(f"[{backend}] filling {args.conversations} conversations...", flush=True)
        server.fill(args.conversations)
        if pg_name:
            # The statistics autovacuum gathers within a minute of a large change: without
            # them the planner takes the freshly filled tables for empty ones.
            asyncio.run(pg_admin(url, "ANALYZE"))
        cookie = server.session_cookie()
        base = f"http://127.0.0.1:{server.http_port}"
        urls = {"inbox": f"{base}/", "conversation": f"{base}/conversations/{server.conversation}"}
        for url in urls.values():
            wrk(url, 2, cookie)  # warm-up: every worker's caches
        for run in range(args.repeat):
            for load in LOADS:
                for page, url in urls.items():
                    results.setdefault((page, load), []).append(wrk(url, args.seconds, cookie, think_ms=500 if load == "users" else 0))
            results.setdefault(("anchor", "saturation"), []).append(anchor(server.inbox_size, args.seconds, directory))
            print(
                f"[{backend}] run {run + 1}: "
                + "; ".join(
                    f"{page}/{load} p50 {r[-1]['p50']:.1f} p99 {r[-1]['p99']:.1f} ms {r[-1]['rps']:.0f}/s"
                    for (page, load), r in results.items()
                ),
                flush=True,
            )
        for (page, load), measured in results.items():
            assert all(r["errors"] == 0 for r in measured), f"{page}/{load}: non-2xx answers (session lost?)"
    finally:
        server.stop()
        if pg_name:
            drop_pg_database(args.pg, pg_name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="caducee serve --workers (one per core)")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        results = run_backend(backend, args)
        anchor_rps = median([r["rps"] for r in results[("anchor", "saturation")]])
        for load, load_label in LOADS.items():
            for page, page_label in PAGES.items():
                measured = results[(page, load)]
                p50, p99, rps = (median([r[k] for r in measured]) for k in ("p50", "p99", "rps"))
                versus = f"{rps / anchor_rps:.2f}x" if load == "saturation" else ""
                rows.append(
                    f"| {backend} | {page_label} | {load_label} | {p50:.1f} | {p99:.1f} | {'yes' if p99 < 100 else '**no**'} | "
                    f"{rps:.0f} | {versus} |"
                )
        anchor_runs = results[("anchor", "saturation")]
        rows.append(
            f"| {backend} | anchor: bare uvicorn, fixed page | {LOADS['saturation']} | {median([r['p50'] for r in anchor_runs]):.1f} | "
            f"{median([r['p99'] for r in anchor_runs]):.1f} | | {anchor_rps:.0f} | 1.00x |"
        )
    command = (
        f"`.venv/bin/python bench/webmail.py --conversations {args.conversations} --seconds {args.seconds} "
        f"--repeat {args.repeat} --workers {args.workers}`"
    )
    body = f"""## Webmail pages under 50 concurrent users (`bench/webmail.py`)

{command} — {machine()}.

`caducee serve --demo --workers {args.workers}` (S/MIME on), the patient's mailbox filled with {args.conversations}
conversations by smtp-source, a session opened through both login steps; wrk (1 thread, {CONNECTIONS}
connections, {args.seconds} s per figure, medians of {args.repeat} runs) sends the session cookie. Two loads:
50 users who each click every 0.5 s on average (wrk's `delay()`, a random pause of 0 to 1 s so
that the users do not arrive in step; the pause is not counted in the latency),
and the same 50 connections back to back, which is the most the server can take. The anchor
is a bare uvicorn app (same loop, same HTTP parser, one process) returning a fixed page of the
inbox page's size: the floor of the stack. wrk runs on the same 2 cores as the server.
Target: p99 < 100 ms.

| backend | page | load | p50 (ms) | p99 (ms) | p99 < 100 ms | requests/s | vs anchor |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows)
    write_section("webmail", body)
    print(body)


if __name__ == "__main__":
    main()
