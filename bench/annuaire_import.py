"""Benchmark: importing a full-size MSSanté extraction against a fair anchor.

Generates a 535,000-row `Extraction_Correspondance_MSSante` file in the real layout, then,
on SQLite and on PostgreSQL, times
  - our import (`caducee annuaire import extraction`: parse, validate, stage, merge into
    professionals / structures / mailboxes, retire, one transaction), then the same file again;
  - the anchor: the very rows that import wrote, already parsed (read back from it, not
    timed), bulk-loaded into the same three tables, with the same indexes, in a fresh
    database, through the same driver (sqlite3 executemany, asyncpg COPY), one transaction:
    what any import of this file must at least write;
  - the old anchor, for comparison with earlier figures: the lines split on `|` and
    bulk-inserted into a plain 31-column table without an index.
Each measurement runs in a fresh process so that its peak RSS is its own; the import is
also run on a file ten times smaller to show that memory does not grow with the file.

    .venv/bin/python bench/annuaire_import.py [--rows 535000] [--repeat 3] [--pg URL]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import create_pg_database, drop_pg_database  # noqa: E402
from report import machine, median, write_section  # noqa: E402

DEFAULT_PG = os.environ.get("CADUCEE_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/test"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_database(backend: str, workdir: Path, pg_url: str) -> tuple[str, str | None]:
    """(url, pg database name to drop) of a new, migrated database."""
    from caducee import db

    if backend == "sqlite":
        url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:8]}.sqlite3'}"
        db.upgrade(url)
        return url, None
    name, url = create_pg_database(pg_url, "caducee_bench")
    db.upgrade(url)
    return url, name


async def measure_import(url: str, path: Path) -> dict[str, float]:
    from caducee import db
    from caducee.annuaire.importer import import_on_connection

    engine = db.create_engine(url)
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            report = await import_on_connection(conn, "extraction", path)
        seconds = time.perf_counter() - start
        # The daily case: the same file again (the real one changes by a fraction of a percent).
        start = time.perf_counter()
        async with engine.begin() as conn:
            again = await import_on_connection(conn, "extraction", path)
        reimport_seconds = time.perf_counter() - start
        assert again.inserted == 0 and again.updated == 0 and again.retired == 0, again.summary()
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows": report.rows_ok, "bad": report.rows_bad, "reimport_seconds": reimport_seconds}


async def measure_bare(url: str, path: Path) -> dict[str, float]:
    """The anchor: split each line, bulk insert through the driver, one transaction."""
    from sqlalchemy import text

    from caducee import db
    from caducee.annuaire.importing import bulk_insert

    columns = [f"c{i}" for i in range(31)]
    engine = db.create_engine(url)
    rows = 0
    try:
        start = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TABLE bare_rows ({', '.join(c + ' TEXT' for c in columns)})"))
            batch: list[tuple[str, ...]] = []
            with open(path, encoding="utf-8") as handle:
                next(handle)
                for line in handle:
                    batch.append(tuple(line.rstrip("\n").split("|")))
                    if len(batch) >= 5000:
                        await bulk_insert(conn, "bare_rows", columns, batch)
                        rows += len(batch)
                        batch = []
            await bulk_insert(conn, "bare_rows", columns, batch)
            rows += len(batch)
        seconds = time.perf_counter() - start
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows": rows, "bad": 0}


ANCHOR_TABLES = ("annuaire_import_runs", "structures", "professionals", "mailboxes")  # in foreign-key order


async def dump_imported(url: str, path: Path, dump: Path) -> None:
    """Import `path` (not timed) and write every row of the tables it fills to `dump`, in batches."""
    import pickle

    from sqlalchemy import text

    from caducee import db
    from caducee.annuaire.importer import import_on_connection

    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            await import_on_connection(conn, "extraction", path)
        with open(dump, "wb") as out:
            async with engine.connect() as conn:
                for table in ANCHOR_TABLES:
                    result = await conn.stream(text(f"SELECT * FROM {table}"))
                    columns = list(result.keys())
                    async for rows in result.partitions(5000):
                        pickle.dump((table, columns, [tuple(row) for row in rows]), out, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        await engine.dispose()


async def measure_anchor(url: str, dump: Path) -> dict[str, float]:
    """The fair anchor: load the dumped rows into the same indexed tables; only the inserts and the commit are timed."""
    import pickle

    from sqlalchemy import text

    from caducee import db
    from caducee.annuaire.importing import bulk_insert

    engine = db.create_engine(url)
    seconds, rows = 0.0, 0
    try:
        async with engine.connect() as conn:
            for table in reversed(ANCHOR_TABLES):  # whatever a migration seeded: the rows come from the dump
                await conn.execute(text(f"DELETE FROM {table}"))
            await conn.commit()
            with open(dump, "rb") as handle:
                while True:
                    try:
                        table, columns, batch = pickle.load(handle)
                    except EOFError:
                        break
                    start = time.perf_counter()
                    await bulk_insert(conn, table, columns, batch)
                    seconds += time.perf_counter() - start
                    rows += len(batch) if table == "mailboxes" else 0
            start = time.perf_counter()
            await conn.commit()
            seconds += time.perf_counter() - start
    finally:
        await engine.dispose()
    return {"seconds": seconds, "rows": rows, "bad": 0}


def child(mode: str, backend: str, path: Path, workdir: Path, pg_url: str) -> None:
    url, pg_name = fresh_database(backend, workdir, pg_url)
    try:
        if mode == "anchor":
            dump = workdir / f"anchor-{uuid.uuid4().hex[:8]}.pickle"
            source, source_name = fresh_database(backend, workdir, pg_url)
            try:
                asyncio.run(dump_imported(source, path, dump))
            finally:
                if source_name:
                    drop_pg_database(pg_url, source_name)
            try:
                result = asyncio.run(measure_anchor(url, dump))
            finally:
                dump.unlink(missing_ok=True)
        else:
            result = asyncio.run((measure_import if mode == "import" else measure_bare)(url, path))
    finally:
        if pg_name:
            drop_pg_database(pg_url, pg_name)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def run_child(mode: str, backend: str, path: Path, workdir: Path, pg_url: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, backend, str(path), str(workdir), "--pg", pg_url],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {backend} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=535_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg", default=DEFAULT_PG)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-write", action="store_true", help="print only, do not update docs/benchmarks.md")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "BACKEND", "FILE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, backend, file, workdir = args.child
        child(mode, backend, Path(file), Path(workdir), args.pg)
        return

    from caducee.annuaire.synthetic import generate_extraction

    with tempfile.TemporaryDirectory(prefix="caducee-bench-") as tmp:
        workdir = Path(tmp)
        big = generate_extraction(workdir / "Extraction_Correspondance_MSSante_big.txt", args.rows)
        small = generate_extraction(workdir / "Extraction_Correspondance_MSSante_small.txt", max(args.rows // 10, 1000))
        print(f"generated {args.rows} rows ({big.stat().st_size / 1e6:.0f} MB)", flush=True)
        lines = []
        for backend in args.backends.split(","):
            imports, anchors, bares = [], [], []
            for attempt in range(args.repeat):
                imports.append(run_child("import", backend, big, workdir, args.pg))
                anchors.append(run_child("anchor", backend, big, workdir, args.pg))
                bares.append(run_child("bare", backend, big, workdir, args.pg))
                print(
                    f"{backend} #{attempt + 1}: import {imports[-1]['seconds']:.1f}s, again {imports[-1]['reimport_seconds']:.1f}s, "
                    f"anchor {anchors[-1]['seconds']:.1f}s, old anchor {bares[-1]['seconds']:.1f}s",
                    flush=True,
                )
            small_import = run_child("import", backend, small, workdir, args.pg)
            rows = imports[-1]["rows"]  # the file's good rows: every rate below is of these
            import_s = median([r["seconds"] for r in imports])
            again_s = median([r["reimport_seconds"] for r in imports])
            anchor_s = median([r["seconds"] for r in anchors])
            bare_s = median([r["seconds"] for r in bares])
            lines.append(
                f"| {backend} | {import_s:.1f} s ({rows / import_s:,.0f}/s) | {anchor_s:.1f} s ({rows / anchor_s:,.0f}/s) "
                f"| **{anchor_s / import_s:.2f}x** | {again_s:.1f} s | {anchor_s / again_s:.2f}x "
                f"| {bare_s:.1f} s | {bare_s / import_s:.2f}x "
                f"| {median([r['peak_rss_mb'] for r in imports]):.0f} MB | {small_import['peak_rss_mb']:.0f} MB |"
            )
            print(lines[-1], flush=True)
    body = (
        f"""## Annuaire import (`bench/annuaire_import.py`)

Command: `.venv/bin/python bench/annuaire_import.py --rows {args.rows} --repeat {args.repeat}` ({machine()}).
A generated `Extraction_Correspondance_MSSante` file of {args.rows:,} rows in the real 31-column layout.
*Import*: our whole import (parse, validate identifiers, stage, merge into professionals,
structures and mailboxes, retire, one transaction). *Anchor*: the rows that import wrote, already
parsed (read back from it beforehand, not timed), bulk-loaded into the same three tables with the
same indexes in a fresh database, through the same driver (sqlite3 executemany, asyncpg COPY), in
one transaction: only the inserts and the commit are timed. *Old anchor* (earlier figures): the lines
split on `|` into a plain 31-column table without an index. Each figure is the median of {args.repeat}
runs, each in a fresh process and a fresh database; peak RSS is the import process's own. Targets:
import >= 0.5x the anchor; the 535,000-row file in under 20 s on PostgreSQL, the same file again under
10 s; peak memory flat in the file size (the full file against one ten times smaller).

| backend | import | anchor | ratio | same file again | ratio | old anchor | ratio | import peak RSS | same, 1/10 file |
|---|---|---|---|---|---|---|---|---|---|
"""
        + "\n".join(lines)
        + """

Memory is flat: the import streams the file in batches of 5,000 rows and the folding caches are bounded.
*Same file again* is the daily case: nothing is rewritten (no dead rows, no WAL on PostgreSQL), but the file
is still read, validated and staged.
Profile: `python -m cProfile -s tottime -m caducee annuaire import extraction FILE`.
"""
    )
    print(body)
    if not args.no_write:
        write_section("annuaire_import", body)


if __name__ == "__main__":
    main()
