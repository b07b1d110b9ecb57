"""Benchmark: a CNAM campaign fanned out to every patient, against a bare bulk insert.

For each backend, in a fresh process and a fresh database:
  - the population is generated as a CNAM file (streamed) and loaded through our import
    (`caducee patients import`: parse, validate, stage, merge into patients, mailboxes,
    guardianships, bulk provisional codes): its rate is reported against the anchor;
  - a campaign to everybody is created and started (the message stored once through the
    accept pipeline, the rules as sets, the batches cut) and fanned out by a runner, timed
    from the start call to "every targeted patient has it" (the last batch committed);
  - the anchor: the same number of rows of the same width as a mailbox entry (four
    integers, the keyword, a timestamp) bulk-inserted into an unindexed table through the
    driver's fastest path (asyncpg COPY, sqlite3 executemany), one transaction.
Peak RSS is the child process's own; compare two sizes to see that memory is flat.

    .venv/bin/python bench/campaigns.py --patients 1000000 --backends sqlite
    .venv/bin/python bench/campaigns.py --patients 10000000 --backends postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database  # noqa: E402
from report import machine, median, write_section  # noqa: E402

DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(url: str, population: Path, workdir: Path, batch: int) -> dict[str, float]:
    from caducee import db
    from caducee.annuaire.population import PlainSource, import_population
    from caducee.annuaire.targets import Criteria
    from caducee.campaigns import tokens
    from caducee.campaigns.runner import Runner
    from caducee.campaigns.service import Campaigns
    from caducee.config import Settings
    from caducee.crypto.atrest import BodyCipher, load_master_key
    from caducee.gateway.pipeline import AcceptPipeline

    settings = Settings(data_dir=workdir / f"var-{uuid.uuid4().hex[:6]}", database_url=url, smime="off", campaign_batch_size=batch)
    engine = db.create_engine(url)
    cnam = settings.cnam_senders[0]
    try:
        from caducee import demo

        await demo.seed(engine, settings, certificates=False)  # the CNAM's mailbox, our domains
        issued = 0

        async def letters(conn, profiles):  # type: ignore[no-untyped-def]
            nonlocal issued
            issued += len(profiles)

        start = time.perf_counter()
        async with engine.begin() as conn:
            report = await import_population(conn, PlainSource(population), patient_domain=settings.patient_domain, on_created=letters)
        import_seconds = time.perf_counter() - start
        if engine.dialect.name == "postgresql":  # as autovacuum would after a load this size
            from sqlalchemy import text

            async with engine.connect() as conn:
                await conn.execute(text("COMMIT"))
                await conn.execute(text("ANALYZE"))
        async with engine.begin() as conn:
            await tokens.rotate(conn, cnam)
        pipeline = AcceptPipeline(engine, settings, BodyCipher(load_master_key(settings.data_dir)))
        service = Campaigns(engine, settings, pipeline)
        campaign_id, _ = await service.create(cnam, subject="Dépistage", body="Faites le test : https://www.ameli.fr", criteria=Criteria())
        start = time.perf_counter()
        await service.start(campaign_id)
        filed = await Runner(engine, service).work()
        fan_out_seconds = time.perf_counter() - start
        progress = await service.progress(campaign_id)
        assert progress.state == "done" and progress.delivered == filed, progress
        await pipeline.close()
    finally:
        await engine.dispose()
    return {
        "import_seconds": import_seconds,
        "imported": report.rows_ok,
        "codes": issued,
        "fan_out_seconds": fan_out_seconds,
        "delivered": filed,
        "targeted": progress.targeted,
    }


async def measure_bare(url: str, rows: int) -> dict[str, float]:
    """The anchor: `rows` rows of a mailbox entry's width into an unindexed table."""
    from sqlalchemy import text

    from caducee import db
    from caducee.annuaire.importing import bulk_insert

    engine = db.create_engine(url)
    columns = ["folder_id", "uid", "message_id", "modseq", "flags", "received_at"]
    postgres = engine.dialect.name == "postgresql"
    moment = datetime.now(UTC) if postgres else datetime.now(UTC).isoformat()
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            kind = "TIMESTAMPTZ" if postgres else "TEXT"
            await conn.execute(
                text(
                    f"CREATE TABLE bare_entries (folder_id BIGINT, uid BIGINT, message_id BIGINT, modseq BIGINT, flags TEXT, received_at {kind})"
                )
            )
            for first in range(0, rows, 50_000):
                batch = [(i, 1, 1, 2, "$Prevention", moment) for i in range(first, min(first + 50_000, rows))]
                await bulk_insert(conn, "bare_entries", columns, batch)
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


def child(mode: str, backend: str, population: Path, workdir: Path, pg_url: str, rows: int, batch: int) -> None:
    url, name = fresh(backend, workdir, pg_url)
    try:
        result = asyncio.run(measure(url, population, workdir, batch) if mode == "campaign" else measure_bare(url, rows))
    finally:
        if name:
            drop_pg_database(pg_url, name)
        if url.startswith("sqlite"):
            Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def run_child(mode: str, backend: str, population: Path, workdir: Path, args: argparse.Namespace, rows: int) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            backend,
            str(population),
            str(workdir),
            str(rows),
            "--pg",
            args.pg,
            "--batch",
            str(args.batch),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {backend} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, backend, population, workdir, rows = args.child
        child(mode, backend, Path(population), Path(workdir), args.pg, int(rows), args.batch)
        return

    from caducee.annuaire.synthetic_population import write_population

    lines = []
    with tempfile.TemporaryDirectory(prefix="caducee-bench-") as tmp:
        workdir = Path(tmp)
        population = write_population(workdir / "population.txt", args.patients)
        print(f"generated {args.patients:,} patients ({population.stat().st_size / 1e6:.0f} MB)", flush=True)
        for backend in args.backends.split(","):
            runs, bares = [], []
            for attempt in range(args.repeat):
                runs.append(run_child("campaign", backend, population, workdir, args, args.patients))
                bares.append(run_child("bare", backend, population, workdir, args, runs[-1]["delivered"]))
                print(
                    f"{backend} #{attempt + 1}: import {runs[-1]['import_seconds']:.1f}s, fan-out {runs[-1]['fan_out_seconds']:.1f}s "
                    f"({runs[-1]['delivered']:,} patients), bare {bares[-1]['seconds']:.1f}s",
                    flush=True,
                )
            fan_rate = median([r["delivered"] / r["fan_out_seconds"] for r in runs])
            import_rate = median([r["imported"] / r["import_seconds"] for r in runs])
            bare_rate = median([b["rows"] / b["seconds"] for b in bares])
            delivered = int(median([r["delivered"] for r in runs]))
            lines.append(
                f"| {backend} | {args.patients:,} | {delivered:,} | {fan_rate:,.0f} | {bare_rate:,.0f} | {fan_rate / bare_rate:.2f}x "
                f"| {65_000_000 / fan_rate / 60:.1f} min | {import_rate:,.0f} | {import_rate / bare_rate:.2f}x "
                f"| {66_000_000 / import_rate / 60:.0f} min | {median([r['peak_rss_mb'] for r in runs]):.0f} MB |"
            )
            print(lines[-1], flush=True)
    body = (
        f"""## CNAM campaign fan-out (`bench/campaigns.py`)

Command: `.venv/bin/python bench/campaigns.py --patients {args.patients} --repeat {args.repeat} --backends {args.backends}` ({machine()}).
The population is a generated CNAM file loaded through `caducee patients import` (its rate: *import*); a campaign
to everybody is then started and fanned out in batches of {args.batch:,} (*fan-out*: from the start call, which
stores the message once, counts by the rules and cuts the batches, to the last batch committed). *Anchor*: as many
rows of a mailbox entry's width bulk-inserted into an unindexed table (asyncpg COPY, sqlite3 executemany), one
transaction. Medians of {args.repeat} runs, each in a fresh process and database. Targets: fan-out >= 0.5x the
anchor, >= 110,000 patients/s on PostgreSQL (65 million in under 10 minutes); import >= 0.5x, 66 million in
under 30 minutes on PostgreSQL; peak memory flat in N (compare two sizes).

| backend | patients | received it | fan-out patients/s | anchor rows/s | ratio | 65 M would take | import rows/s | ratio | 66 M would take | peak RSS |
|---|---|---|---|---|---|---|---|---|---|---|
"""
        + "\n".join(lines)
        + "\n"
    )
    print(body)
    if not args.no_write:
        write_section("campaigns", body)


if __name__ == "__main__":
    main()
