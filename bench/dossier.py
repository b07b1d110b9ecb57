"""Benchmark: the dossier's "Mes documents" page with 1,000 documents under 50 concurrent
users, and the XDM intake rate through SMTP against the plain accept rate of the same
messages without the XDM package, in the same run.

`caducee serve --demo --workers 2` (S/MIME on) on SQLite and on PostgreSQL. The demo
doctor's practice software is played by aiosmtplib over a trusted-network submission port
(--sessions parallel sessions): --documents messages, each carrying one document in an
IHE_XDM.ZIP (plus the same document as a plain PDF), are sent to the demo patient; the
intake rate counts from the first message sent to the last document filed in the dossier
(the intake runs after each 250, off the SMTP session). Then the same messages, the archive
renamed so that it is an ordinary attachment, are sent again: their accept rate (to the
last 250) is the anchor. Target: intake >= 0.7x the plain rate.

The dossier then holds --documents documents; a session is opened through both login steps
and wrk drives `/dossier` (the 25 most recent, every document's access decided by the rules)
with 50 connections for --seconds, as 50 users clicking every 0.5 s and back to back, beside
the same bare uvicorn anchor as bench/webmail.py. Target: p99 < 100 ms.

    .venv/bin/python bench/dossier.py [--documents 1000] [--seconds 10] [--repeat 3] [--workers 2] [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

import aiosmtplib
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import create_pg_database, drop_pg_database, pg_admin  # noqa: E402
from report import machine, median, write_section  # noqa: E402
from webmail import CONNECTIONS, DEFAULT_PG, LOADS, Caducee, anchor, wrk  # noqa: E402
from xdm_builder import PDF, Doc, package, xdm_mail  # noqa: E402

from caducee import db  # noqa: E402

TYPES = ["11488-4", "11502-2", "18748-4", "57833-6", "34133-9"]


def messages(credentials: dict, count: int, *, with_xdm: bool, run: str) -> list[bytes]:  # type: ignore[type-arg]
    doctor = credentials["professionals"]["doctor"]["address"]
    patient = credentials["patients"]["adult_1"]
    out = []
    for n in range(count):
        doc = Doc(
            data=PDF[:-6] + f"(document {run}-{n})\n".encode() + b"%%EOF\n",
            type_code=TYPES[n % len(TYPES)],
            title=f"Document {n} du lot {run}",
            care=f"2026{1 + n % 12:02d}{1 + n % 28:02d}",
            unique_id=f"1.2.250.1.999.{run}.{n}",
        )
        msg = xdm_mail(doctor, patient["address"], package([doc], patient["ins"]), subject=f"Compte rendu {n}")
        raw = msg.as_bytes(policy=SMTP_POLICY)
        out.append(raw if with_xdm else raw.replace(b'filename="IHE_XDM.ZIP"', b'filename="ARCHIVE.ZIP"'))
    return out


async def send_all(port: int, sender: str, recipient: str, raws: list[bytes], sessions: int) -> float:
    """Send every message over `sessions` parallel SMTP sessions; seconds to the last 250."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in raws:
        queue.put_nowait(raw)

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=120)
        await client.connect()
        try:
            while not queue.empty():
                raw = queue.get_nowait()
                await client.sendmail(sender, [recipient], raw)
        finally:
            await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return time.perf_counter() - start


async def filed(url: str) -> int:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM dossier_documents"))).scalar_one())
    finally:
        await engine.dispose()


async def intake_run(server: Caducee, url: str, count: int, sessions: int, run: str) -> tuple[float, float]:
    """(intake messages/s, plain accept messages/s) for `count` messages each."""
    credentials = server.credentials
    sender, recipient = credentials["professionals"]["doctor"]["address"], credentials["patients"]["adult_1"]["address"]
    with_xdm = messages(credentials, count, with_xdm=True, run=run)
    plain = messages(credentials, count, with_xdm=False, run=run)
    before = await filed(url)
    start = time.perf_counter()
    await send_all(server.smtp_port, sender, recipient, with_xdm, sessions)
    while await filed(url) < before + count:
        if time.perf_counter() - start > 600:
            raise RuntimeError("the intake did not file every document")
        await asyncio.sleep(0.05)
    intake = count / (time.perf_counter() - start)
    accept = count / await send_all(server.smtp_port, sender, recipient, plain, sessions)
    return intake, accept


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    directory = Path(tempfile.mkdtemp(prefix=f"bench-dossier-{backend}-"))
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'caducee.sqlite3'}"
    else:
        pg_name, url = create_pg_database(args.pg, "bench_dossier")
    server = Caducee(directory, url, args.workers)
    results: dict[str, list[dict[str, float]]] = {}
    try:
        server.start()
        batches = max(1, args.repeat)
        per_batch = args.documents // batches
        for run in range(batches):
            intake, accept = asyncio.run(intake_run(server, url, per_batch, args.sessions, str(run)))
            results.setdefault("intake", []).append({"intake": intake, "accept": accept})
            print(
                f"[{backend}] intake batch {run + 1}: {intake:.1f} msg/s filed, plain {accept:.1f} msg/s, {intake / accept:.2f}x",
                flush=True,
            )
        if pg_name:
            asyncio.run(pg_admin(url, "ANALYZE"))
        cookie = session_cookie(server)
        page = f"http://127.0.0.1:{server.http_port}/dossier"
        wrk(page, 2, cookie)  # warm-up
        for run in range(args.repeat):
            for load in LOADS:
                results.setdefault(load, []).append(wrk(page, args.seconds, cookie, think_ms=500 if load == "users" else 0))
            results.setdefault("anchor", []).append(anchor(server.page_size, args.seconds, directory))
            print(
                f"[{backend}] run {run + 1}: "
                + "; ".join(
                    f"{k} p50 {v[-1]['p50']:.1f} p99 {v[-1]['p99']:.1f} ms {v[-1]['rps']:.0f}/s"
                    for k, v in results.items()
                    if k != "intake"
                ),
                flush=True,
            )
        for load in (*LOADS, "anchor"):
            assert all(r["errors"] == 0 for r in results[load]), f"{load}: non-2xx answers"
    finally:
        server.stop()
        if pg_name:
            drop_pg_database(args.pg, pg_name)
    return results


def session_cookie(server: Caducee) -> str:
    import httpx
    from webmail_client import form_token, latest_code

    patient = server.credentials["patients"]["adult_1"]
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as client:
        csrf = form_token(client.get("/connexion").text)
        client.post("/connexion", data={"csrf": csrf, "identifiant": patient["ins"], "mot_de_passe": patient["password"]})
        client.post("/connexion/code", data={"csrf": csrf, "code": latest_code(server.directory / "var" / "outbox", patient["email"])})
        token = client.cookies.get("caducee_session")
        assert token, "login failed"
        page = client.get("/dossier")
        assert page.status_code == 200 and "documents" in page.text, page.status_code
        server.page_size = len(page.content)  # type: ignore[attr-defined]
        return f"caducee_session={token}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="caducee serve --workers (one per core)")
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    rows, intake_rows = [], []
    for backend in args.backends.split(","):
        results = run_backend(backend, args)
        intake = median([r["intake"] for r in results["intake"]])
        accept = median([r["accept"] for r in results["intake"]])
        ratio = median([r["intake"] / r["accept"] for r in results["intake"]])
        intake_rows.append(f"| {backend} | {intake:.1f} | {accept:.1f} | {ratio:.2f}x | {'yes' if ratio >= 0.7 else '**no**'} |")
        anchor_rps = median([r["rps"] for r in results["anchor"]])
        for load, label in LOADS.items():
            p50, p99, rps = (median([r[k] for r in results[load]]) for k in ("p50", "p99", "rps"))
            versus = f"{rps / anchor_rps:.2f}x" if load == "saturation" else ""
            rows.append(f"| {backend} | {label} | {p50:.1f} | {p99:.1f} | {'yes' if p99 < 100 else '**no**'} | {rps:.0f} | {versus} |")
        anchor_runs = results["anchor"]
        rows.append(
            f"| {backend} | anchor: bare uvicorn, fixed page | {median([r['p50'] for r in anchor_runs]):.1f} | "
            f"{median([r['p99'] for r in anchor_runs]):.1f} | | {anchor_rps:.0f} | 1.00x |"
        )
    command = (
        f"`.venv/bin/python bench/dossier.py --documents {args.documents} --sessions {args.sessions} --seconds {args.seconds} "
        f"--repeat {args.repeat} --workers {args.workers}`"
    )
    body = (
        f"""## The dossier: XDM intake by mail, and "Mes documents" with {args.documents} documents (`bench/dossier.py`)

{command} — {machine()}.

`caducee serve --demo --workers {args.workers}` (S/MIME on). {args.documents} messages from the demo doctor to the demo
patient, in {args.repeat} batches over {args.sessions} SMTP sessions (aiosmtplib, trusted-network submission port),
each with one document in an IHE_XDM.ZIP: the intake rate runs from the first message sent to the
last document filed (signed, delivered with its post-delivery row in the same commit, then the
stored form read back, opened, parsed, unzipped, checked, sealed, recorded in the access history). The anchor is the same messages with the archive renamed (an ordinary attachment,
no intake), sent the same way in the same run: their accept rate to the last 250. Target: >= 0.7x.

| backend | XDM intake (messages/s, documents filed) | same messages without XDM (messages/s accepted) | ratio | >= 0.7x |
|---|---|---|---|---|
"""
        + "\n".join(intake_rows)
        + f"""

Then the dossier holds {args.documents} documents; wrk (1 thread, {CONNECTIONS} connections, {args.seconds} s per figure, medians of
{args.repeat} runs) sends a session cookie to `/dossier` (the 25 most recent, each document's access decided by
the rules), as 50 users clicking every 0.5 s on average and back to back; the anchor is a bare uvicorn
app returning a fixed page of the same size. wrk runs on the same cores as the server. Target: p99 < 100 ms.

| backend | load | p50 (ms) | p99 (ms) | p99 < 100 ms | requests/s | vs anchor |
|---|---|---|---|---|---|---|
"""
        + "\n".join(rows)
    )
    write_section("dossier", body)
    print(body)


if __name__ == "__main__":
    main()
