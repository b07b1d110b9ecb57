"""Entry point of the imports: pick the format, run it in one transaction, record the run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncConnection

from caducee import db
from caducee.annuaire.formats import ExtractionFormat, PersonActivityFormat
from caducee.annuaire.importing import ImportFileError, ImportReport, RowFormat, run_import
from caducee.annuaire.models import ImportRun
from caducee.annuaire.whitelist import import_whitelist
from caducee.config import Settings

__all__ = ["ImportFileError", "import_file", "import_on_connection"]

FORMATS: dict[str, type[RowFormat]] = {"extraction": ExtractionFormat, "ps": PersonActivityFormat}


async def import_on_connection(
    conn: AsyncConnection, kind: str, path: Path, *, report_stream: TextIO | None = None, progress_stream: TextIO | None = None
) -> ImportReport:
    """Import `path` as `kind` on `conn` and record the run; the caller commits."""
    if kind != "whitelist" and kind not in FORMATS:
        raise ImportFileError(f"unknown import kind {kind!r}")
    runs = ImportRun.__table__
    run_id = db.inserted_id(
        await conn.execute(
            runs.insert().values(
                kind=kind,
                file_name=Path(path).name,
                started_at=datetime.now(UTC),
                rows_read=0,
                rows_bad=0,
                inserted=0,
                updated=0,
                retired=0,
            )
        )
    )
    if kind == "whitelist":
        report = await import_whitelist(conn, path, report_stream=report_stream)
    else:
        report = await run_import(conn, FORMATS[kind](), path, run_id, report_stream=report_stream, progress_stream=progress_stream)
    await conn.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(
            finished_at=datetime.now(UTC),
            rows_read=report.rows_read,
            rows_bad=report.rows_bad,
            inserted=report.inserted,
            updated=report.updated,
            retired=report.retired,
        )
    )
    return report


async def import_file(settings: Settings, kind: str, path: Path, *, report_stream: TextIO | None = None) -> ImportReport:
    """Import a file into the configured database (migrated first), all or nothing."""
    url = settings.effective_database_url
    import asyncio

    await asyncio.to_thread(db.upgrade, url)
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            return await import_on_connection(conn, kind, path, report_stream=report_stream)
    finally:
        await engine.dispose()
