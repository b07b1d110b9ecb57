"""Benchmark: a CNAM campaign sent to every patient, against a bare bulk insert.

For each backend and size, in a fresh process and a fresh database:
  - a patient with 1,000 conversations (accepted through the pipeline) and 100 earlier
    campaigns in her inbox;
  - the population generated as a CNAM file (streamed) and loaded through our import
    (`caducee patients import`: parse, validate, stage, merge into patients, mailboxes,
    guardianships; bulk provisional codes through the webmail's `LetterCodes`): its rate
    against the anchor, and against a bare COPY of the same rows (its own anchor);
  - a campaign to everybody created and sent, timed from the start call to "every
    targeted patient has it" (campaigns are filed on read: that is the commit that marks
    it sent, after which any inbox opened shows it); then a random sample of inboxes is
    opened one by one, as webmail requests would, to check each has it exactly once and
    to time that first opening;
  - meanwhile, the patient's inbox page (the filing check, then the first page of her
    conversation list) in a loop: its latencies while the campaign is sent and filed;
  - the anchor: the same number of rows of the same width as a mailbox entry (four
    integers, the keyword, a timestamp) bulk-inserted into an unindexed table through the
    driver's fastest path (asyncpg COPY, sqlite3 executemany), one transaction.
Peak RSS is the child process's own; compare two sizes to see that memory is flat.

    .venv/bin/python bench/campaigns.py --patients 1000000 --backends sqlite
    .venv/bin/python bench/campaigns.py --patients 1000000,10000000 --backends postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database  # noqa: E402
from report import machine, median, peak_rss_mb, write_section  # noqa: E402

DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"


SAMPLE = 2000  # inboxes opened after the start
CONVERSATIONS = 1000
EARLIER_CAMPAIGNS = 100


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def measure(url: str, population: Path, workdir: Path) -> dict[str, float]:
    from email.message import EmailMessage
    from email.policy import SMTP

    from sqlalchemy import text

    from caducee import db, demo
    from caducee.annuaire import patients as annuaire_patients
    from caducee.annuaire.population import PlainSource, import_population
    from caducee.annuaire.targets import Criteria
    from caducee.campaigns.deliveries import Deliveries
    from caducee.campaigns.service import Campaigns
    from caducee.config import Settings
    from caducee.crypto.atrest import BodyCipher, load_master_key
    from caducee.gateway.pipeline import AcceptPipeline, Channel, Envelope
    from caducee.history.chain import history_key
    from caducee.history.service import AccessHistory
    from caducee.webmail.codes import CodeHasher
    from caducee.webmail.letters import LetterCodes
    from caducee.webmail.service import Webmail

    settings = Settings(data_dir=workdir / f"var-{uuid.uuid4().hex[:6]}", database_url=url, smime="off")
    engine = db.create_engine(url)
    cnam = settings.cnam_senders[0]
    try:
        credentials = await demo.seed(engine, settings, certificates=False)  # the CNAM's mailbox, our domains, Claire
        assert credentials is not None
        key = load_master_key(settings.data_dir)
        cipher = BodyCipher(key)
        pipeline = AcceptPipeline(engine, settings, cipher)
        service = Campaigns(engine, settings, pipeline)
        deliveries = Deliveries(engine)
        claire = credentials["patients"]["adult_1"]
        doctor = credentials["professionals"]["doctor"]["address"]

        async def write(index: int) -> None:
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = doctor, claire["address"], f"Suivi {index}"
            mail["Message-ID"] = f"<bench-{index}@demo.mssante.fr>"
            mail.set_content(f"Bonjour, voici le compte rendu numéro {index}.")
            result = await pipeline.accept(Envelope(doctor, [claire["address"]], mail.as_bytes(policy=SMTP), Channel.SUBMISSION, doctor))
            assert result.accepted, result

        for first in range(0, CONVERSATIONS, 50):
            await asyncio.gather(*(write(i) for i in range(first, first + 50)))
        async with engine.connect() as conn:
            claire_id = int((await conn.execute(text("SELECT id FROM patients WHERE ins = :i"), {"i": claire["ins"]})).scalar_one())
            profile = (await annuaire_patients.profiles_for(conn, claire_id))[0]
        for index in range(EARLIER_CAMPAIGNS):
            earlier, _ = await service.create(cnam, subject=f"Prévention {index}", body="Un conseil.", criteria=Criteria())
            await service.start(earlier)
        webmail = Webmail(engine, settings, cipher, pipeline, AccessHistory(engine, history_key(key)))

        async def page() -> float:
            began = time.perf_counter()
            await deliveries.materialise([(profile.account.id, profile.account.mailbox_id)])
            lines, total = await webmail.inbox(profile)
            assert total >= CONVERSATIONS and lines
            return time.perf_counter() - began

        await page()  # her 100 campaigns filed, as on her first visit
        quiet = [await page() for _ in range(50)]

        async with engine.connect() as conn:
            demo_patients = int((await conn.execute(text("SELECT max(id) FROM patients"))).scalar_one())
        letters_path = workdir / f"letters-{uuid.uuid4().hex[:6]}.txt"
        with open(letters_path, "wb") as letters_file:
            codes = LetterCodes(CodeHasher(key), letters_file.write)
            start = time.perf_counter()
            async with engine.begin() as conn:
                report = await import_population(conn, PlainSource(population), patient_domain=settings.patient_domain, on_created=codes)
            import_seconds = time.perf_counter() - start
        letters_path.unlink()
        if engine.dialect.name == "postgresql":  # as autovacuum would after a load this size
            async with engine.connect() as conn:
                await conn.execute(text("COMMIT"))
                await conn.execute(text("ANALYZE"))
        async with engine.connect() as conn:  # the imported patients (the demo's never opened the webmail)
            # a random sample drawn by the database: the benchmark itself keeps no list of N patients (flat memory)
            sample = [
                (int(p), int(m))
                for p, m in await conn.execute(
                    text(
                        "SELECT p.id, m.id FROM patients p JOIN mailboxes m ON m.patient_id = p.id WHERE p.id > :d ORDER BY random() LIMIT :n"
                    ),
                    {"d": demo_patients, "n": SAMPLE},
                )
            ]
        campaign_id, _ = await service.create(cnam, subject="Dépistage", body="Faites le test : https://www.ameli.fr", criteria=Criteria())

        busy: list[float] = []
        running = True

        async def pages() -> None:
            while running or len(busy) < 200:
                busy.append(await page())
                await asyncio.sleep(0.005)  # another patient's request, in between

        watcher = asyncio.create_task(pages())
        start = time.perf_counter()
        assert await service.start(campaign_id) == "sent"
        fan_out_seconds = time.perf_counter() - start
        opened = []
        filed = 0
        for patient_id, mailbox_id in sample:
            began = time.perf_counter()
            filed += await deliveries.materialise([(patient_id, mailbox_id)])
            opened.append(time.perf_counter() - began)
        running = False
        await watcher
        progress = await service.progress(campaign_id)
        async with engine.connect() as conn:
            message_id = int((await conn.execute(text("SELECT message_id FROM campaigns WHERE id = :c"), {"c": campaign_id})).scalar_one())
            held = (
                await conn.execute(
                    text(
                        "SELECT count(*), count(DISTINCT f.mailbox_id) FROM mailbox_entries e JOIN folders f ON f.id = e.folder_id "
                        "WHERE e.message_id = :m"
                    ),
                    {"m": message_id},
                )
            ).one()
        # each inbox opened has it once (hers too: her page loop opened it)
        assert progress.state == "sent" and held[0] == held[1] == filed + 1 and filed == len(sample), (progress, held, filed)
        await pipeline.close()
    finally:
        await engine.dispose()
    return {
        "import_seconds": import_seconds,
        "imported": report.rows_ok,
        "codes": codes.issued,
        "fan_out_seconds": fan_out_seconds,
        "delivered": progress.delivered,
        "targeted": progress.targeted,
        "first_open_median_ms": median(opened) * 1000,
        "first_open_p99_ms": _quantile(opened, 0.99) * 1000,
        "page_quiet_p99_ms": _quantile(quiet, 0.99) * 1000,
        "page_busy_median_ms": median(busy) * 1000,
        "page_busy_p99_ms": _quantile(busy, 0.99) * 1000,
        "page_samples": len(busy),
    }


async def measure_import(url: str, population: Path, workdir: Path) -> dict[str, float]:
    """The population import alone, as in `measure` (the demo's world first, the webmail's
    bulk codes), for `--only import`: quicker runs, and a process to profile."""
    from caducee import db, demo
    from caducee.annuaire.population import PlainSource, import_population
    from caducee.config import Settings
    from caducee.crypto.atrest import load_master_key
    from caducee.webmail.codes import CodeHasher
    from caducee.webmail.letters import LetterCodes

    settings = Settings(data_dir=workdir / f"var-{uuid.uuid4().hex[:6]}", database_url=url, smime="off")
    engine = db.create_engine(url)
    try:
        await demo.seed(engine, settings, certificates=False)
        letters_path = workdir / f"letters-{uuid.uuid4().hex[:6]}.txt"
        with open(letters_path, "wb") as letters_file:
            codes = LetterCodes(CodeHasher(load_master_key(settings.data_dir)), letters_file.write)
            start = time.perf_counter()
            async with engine.begin() as conn:
                report = await import_population(conn, PlainSource(population), patient_domain=settings.patient_domain, on_created=codes)
            import_seconds = time.perf_counter() - start
        letters_path.unlink()
    finally:
        await engine.dispose()
    return {"import_seconds": import_seconds, "imported": report.rows_ok, "codes": codes.issued}


async def measure_bare(url: str, rows: int, population: Path | None = None) -> dict[str, float]:
    """The anchor: `rows` rows of a mailbox entry's width into an unindexed table; with
    `population`, that file's rows as they are split (eight text columns: the import's own anchor)."""
    from sqlalchemy import text

    from caducee import db
    from caducee.annuaire.importing import bulk_insert

    engine = db.create_engine(url)
    postgres = engine.dialect.name == "postgresql"
    moment = datetime.now(UTC) if postgres else datetime.now(UTC).isoformat()
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            if population is None:
                columns = ["folder_id", "uid", "message_id", "modseq", "flags", "received_at"]
                kind = "TIMESTAMPTZ" if postgres else "TEXT"
                await conn.execute(
                    text(
                        "CREATE TABLE bare_entries (folder_id BIGINT, uid BIGINT, message_id BIGINT, modseq BIGINT, flags TEXT, "
                        f"received_at {kind})"
                    )
                )
                for first in range(0, rows, 50_000):
                    batch = [(i, 1, 1, 2, "$Prevention", moment) for i in range(first, min(first + 50_000, rows))]
                    await bulk_insert(conn, "bare_entries", columns, batch)
            else:
                columns = ["ins", "last_name", "first_names", "birth_date", "sex", "email", "guardians", "status"]
                await conn.execute(text(f"CREATE TABLE bare_population ({', '.join(c + ' TEXT' for c in columns)})"))
                with open(population, encoding="utf-8") as handle:
                    next(handle)
                    batch = []
                    for line in handle:
                        batch.append(tuple(line.rstrip("\n").split("|")))
                        if len(batch) >= 50_000:
                            await bulk_insert(conn, "bare_population", columns, batch)
                            batch = []
                    await bulk_insert(conn, "bare_population", columns, batch)
        seconds = time.perf_counter() - start
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows": rows}


def fresh(backend: str, workdir: Path, pg_url: str) -> tuple[str, str | None]:
    from caducee import db

    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.sqlite3'}"
        db.upgrade(url)
        return url, None
    name, url = create_pg_database(pg_url, "caducee_bench")
    db.upgrade(url)
    return url, name


def child(mode: str, backend: str, population: Path, workdir: Path, pg_url: str, rows: int) -> None:
    url, name = fresh(backend, workdir, pg_url)
    try:
        if mode == "campaign":
            result = asyncio.run(measure(url, population, workdir))
        elif mode == "import":
            result = asyncio.run(measure_import(url, population, workdir))
        else:
            result = asyncio.run(measure_bare(url, rows, population if mode == "bare-population" else None))
    finally:
        if name:
            drop_pg_database(pg_url, name)
        if url.startswith("sqlite"):
            Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def run_child(mode: str, backend: str, population: Path, workdir: Path, args: argparse.Namespace, rows: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, backend, str(population), str(workdir), str(rows), "--pg", args.pg],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {backend} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="1000000", help="one size or several, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    parser.add_argument(
        "--only",
        choices=["import"],
        help="import: only the population import and its anchor, printed (docs/benchmarks.md is left as it is)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, backend, population, workdir, rows = args.child
        child(mode, backend, Path(population), Path(workdir), args.pg, int(rows))
        return

    from caducee.annuaire.synthetic_population import write_population

    lines, pages = [], []
    for size in [int(n) for n in args.patients.split(",")]:
        with tempfile.TemporaryDirectory(prefix="caducee-bench-") as tmp:
            workdir = Path(tmp)
            population = write_population(workdir / "population.txt", size)
            print(f"generated {size:,} patients ({population.stat().st_size / 1e6:.0f} MB)", flush=True)
            for backend in args.backends.split(","):
                if args.only == "import":
                    imports, own = [], []
                    for attempt in range(args.repeat):
                        imports.append(run_child("import", backend, population, workdir, args, size))
                        own.append(run_child("bare-population", backend, population, workdir, args, size))
                        rate, anchor = imports[-1]["imported"] / imports[-1]["import_seconds"], own[-1]["rows"] / own[-1]["seconds"]
                        print(
                            f"{backend} {size:,} #{attempt + 1}: import {imports[-1]['import_seconds']:.1f}s ({rate:,.0f} rows/s), "
                            f"population anchor {own[-1]['seconds']:.1f}s ({anchor:,.0f} rows/s): {rate / anchor:.2f}x, "
                            f"peak RSS {imports[-1]['peak_rss_mb']:.0f} MB",
                            flush=True,
                        )
                    rate = median([r["imported"] / r["import_seconds"] for r in imports])
                    anchor = median([b["rows"] / b["seconds"] for b in own])
                    print(
                        f"{backend} {size:,}: import {rate:,.0f} rows/s, population anchor {anchor:,.0f} rows/s, {rate / anchor:.2f}x (medians)"
                    )
                    continue
                runs, bares, own = [], [], []
                for attempt in range(args.repeat):
                    runs.append(run_child("campaign", backend, population, workdir, args, size))
                    bares.append(run_child("bare", backend, population, workdir, args, size))
                    own.append(run_child("bare-population", backend, population, workdir, args, size))
                    r = runs[-1]
                    print(
                        f"{backend} {size:,} #{attempt + 1}: import {r['import_seconds']:.1f}s, start {r['fan_out_seconds']:.2f}s "
                        f"({r['delivered']:,} patients), bare {bares[-1]['seconds']:.1f}s, bare population {own[-1]['seconds']:.1f}s, "
                        f"first open p99 {r['first_open_p99_ms']:.1f} ms, page p99 {r['page_busy_p99_ms']:.1f} ms",
                        flush=True,
                    )
                fan_rate = median([r["delivered"] / r["fan_out_seconds"] for r in runs])
                import_rate = median([r["imported"] / r["import_seconds"] for r in runs])
                bare_rate = median([b["rows"] / b["seconds"] for b in bares])
                own_rate = median([b["rows"] / b["seconds"] for b in own])
                delivered = int(median([r["delivered"] for r in runs]))
                lines.append(
                    f"| {backend} | {size:,} | {delivered:,} | {fan_rate:,.0f} | {bare_rate:,.0f} | {fan_rate / bare_rate:.1f}x "
                    f"| {65_000_000 / fan_rate / 60:.2f} min | {import_rate:,.0f} | {import_rate / bare_rate:.2f}x | {own_rate:,.0f} "
                    f"| {import_rate / own_rate:.2f}x | {66_000_000 / import_rate / 60:.0f} min "
                    f"| {median([r['peak_rss_mb'] for r in runs]):.0f} MB |"
                )
                pages.append(
                    f"| {backend} | {size:,} | {median([r['first_open_median_ms'] for r in runs]):.1f} ms "
                    f"| {median([r['first_open_p99_ms'] for r in runs]):.1f} ms | {median([r['page_quiet_p99_ms'] for r in runs]):.1f} ms "
                    f"| {median([r['page_busy_median_ms'] for r in runs]):.1f} ms | {median([r['page_busy_p99_ms'] for r in runs]):.1f} ms "
                    f"| {int(median([r['page_samples'] for r in runs]))} |"
                )
                print(lines[-1], pages[-1], sep="\n", flush=True)
    body = (
        f"""## CNAM campaigns: sending, filing on read, population import (`bench/campaigns.py`)

Command: `.venv/bin/python bench/campaigns.py --patients {args.patients} --repeat {args.repeat} --backends {args.backends}` ({machine()}).
The population is a generated CNAM file loaded through `caducee patients import` with the webmail's bulk provisional
codes (*import*). A campaign to everybody is then sent: *sent* is from the start call (which stores the message once,
counts by the rules, takes the cutoff and the seq) to the commit after which every targeted patient has it (each
inbox is filed when it is opened: docs/architecture.md says why). *Anchor*: as many rows of a mailbox entry's width
bulk-inserted into an unindexed table (asyncpg COPY, sqlite3 executemany), one transaction; *population anchor*: the
same file's rows, split on `|`, bulk-inserted the same way (the import's own anchor). Medians of {args.repeat} runs,
each in a fresh process and database. Targets: sending >= 0.5x the anchor and >= 110,000 patients/s on PostgreSQL;
import >= 0.5x, 66 million in under 30 minutes on PostgreSQL; peak memory flat in N (compare the sizes).

| backend | patients | reached | sent, patients/s | anchor rows/s | ratio | 65 M would take | import rows/s | ratio to anchor | population anchor rows/s | ratio | 66 M would take | peak RSS |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
"""
        + "\n".join(lines)
        + f"""

What sending leaves to the first opening of each inbox, and the inbox page of a patient with {CONVERSATIONS:,} conversations
and {EARLIER_CAMPAIGNS} campaigns (the filing check, then the first page of her list: the webmail service's work, without
HTTP and the template) measured in a loop while the campaign is sent and {SAMPLE:,} random inboxes are opened one by
one (*busy*), and before (*quiet*):

| backend | patients | first opening, median | first opening, p99 | page p99, quiet | page median, busy | page p99, busy | page samples |
|---|---|---|---|---|---|---|---|
"""
        + "\n".join(pages)
        + "\n"
    )
    if args.only:
        return
    print(body)
    if not args.no_write:
        write_section("campaigns", body)


if __name__ == "__main__":
    main()
