"""The machinery shared by the importers of the public `|`-separated directory files.

An import streams the file line by line (memory does not grow with the file), turns each
line into a staging row or a reported bad row (the import never stops on a bad row), bulk
loads the staging rows into a temporary table with the driver's fastest path (COPY on
PostgreSQL, executemany on SQLite), then applies the whole file with a few set-based SQL
statements in the same transaction: the directory changes all at once or not at all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.merge import staging_ddl

BATCH_ROWS = 5_000
BAD_ROW_SAMPLES = 50


class ImportFileError(ValueError):
    """The file as a whole cannot be imported (wrong file, wrong header); nothing changed."""


class BadRow(ValueError):
    """One line cannot be imported; the message says why, the import goes on."""


@dataclass
class ImportReport:
    """What an import read and changed; `bad_samples` holds the first bad rows."""

    kind: str
    file_name: str
    rows_read: int = 0
    rows_ok: int = 0
    rows_bad: int = 0
    duplicates: int = 0
    inserted: int = 0
    updated: int = 0  # rows whose values changed
    unchanged: int = 0  # rows listed again with the same values: not rewritten
    retired: int = 0
    retire_skipped: bool = False
    bad_samples: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.kind} import of {self.file_name}: {self.rows_read} rows read, {self.rows_ok} accepted, "
            f"{self.rows_bad} refused; {self.inserted} added, {self.updated} changed, {self.unchanged} unchanged, "
            f"{self.retired} retired"
        ]
        if self.duplicates:
            lines.append(f"{self.duplicates} duplicate rows (the last one of each was kept)")
        if self.retire_skipped:
            lines.append("nothing was retired: more than half of the rows were refused, which looks like a wrong or truncated file")
        for line_no, message in self.bad_samples:
            lines.append(f"  line {line_no}: {message}")
        if self.rows_bad > len(self.bad_samples):
            lines.append(f"  ... and {self.rows_bad - len(self.bad_samples)} more (see the report file)")
        return "\n".join(lines)


class RowFormat(Protocol):
    """A file layout: how to check the header, turn a line into a staging row, and merge."""

    kind: str
    field_count: int
    staging_table: str
    staging_columns: Sequence[tuple[str, str]]  # (name, SQL type)

    def check_header(self, fields: list[str]) -> None: ...

    def parse(self, line_no: int, fields: list[str]) -> tuple[Any, ...]: ...

    async def merge(self, conn: AsyncConnection, report: ImportReport, run_id: int) -> None: ...


def split_fields(line: str, field_count: int) -> list[str]:
    """Split a `|` line; the real files may end each line with one trailing `|`.

    Values are not stripped here: the validators and the search folding strip what they
    read, and stripping all 31 values of 535,000 rows was a tenth of the import's time.
    """
    fields = line.split("|")
    if len(fields) == field_count + 1 and fields[-1] == "":
        fields.pop()
    if len(fields) != field_count:
        raise BadRow(f"expected {field_count} columns separated by |, found {len(fields)}")
    return fields


def read_lines(path: Path, progress: Callable[[int], None]) -> Iterator[tuple[int, str | BadRow]]:
    """Yield (line number, text or BadRow) for each line after decoding it as UTF-8.

    Decoding is per line so that one badly encoded line (a Latin-1 export, say) is
    reported with its number instead of aborting the whole file.
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            progress(len(raw))
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_no,
                    BadRow(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1}); the file must be saved as UTF-8"),
                )
                continue
            yield line_no, decoded.rstrip("\r\n")


class _Progress:
    """A progress bar on a terminal (tqdm), silence elsewhere (cron, tests, CI logs)."""

    def __init__(self, total: int, description: str, stream: TextIO | None, *, unit: str = "B") -> None:
        self._bar = None
        stream = stream if stream is not None else sys.stderr
        if stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, unit_scale=True, desc=description, file=stream)

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def _create_staging(conn: AsyncConnection, fmt: RowFormat) -> None:
    await conn.execute(text(f"DROP TABLE IF EXISTS {fmt.staging_table}"))
    await conn.execute(text(staging_ddl(conn.dialect.name, fmt.staging_table, fmt.staging_columns)))


async def bulk_insert(conn: AsyncConnection, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows through the driver's own bulk path, inside the connection's transaction.

    SQLAlchemy's executemany adds per-row overhead that dominates a 500,000-row load; the
    raw driver (COPY for asyncpg, executemany for sqlite3) is what the benchmark's bare
    insert uses too.
    """
    if not rows:
        return
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None, "a live connection has its driver's connection"
    if conn.dialect.name == "postgresql":
        await driver.copy_records_to_table(table, records=rows, columns=list(columns))
    else:
        placeholders = ", ".join("?" for _ in columns)
        await driver.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)


async def run_import(
    conn: AsyncConnection,
    fmt: RowFormat,
    path: Path,
    run_id: int,
    *,
    report_stream: TextIO | None = None,
    progress_stream: TextIO | None = None,
) -> ImportReport:
    """Import `path` in `fmt` on `conn` (the caller commits). Bad rows go to `report_stream`.

    `run_id` marks every row the file lists, so that what it no longer lists can be retired
    without comparing the whole table against the staging rows.
    """
    path = Path(path)
    report = ImportReport(kind=fmt.kind, file_name=path.name)
    progress = _Progress(os.path.getsize(path), f"{fmt.kind} {path.name}", progress_stream)
    column_names = [name for name, _ in fmt.staging_columns]

    def bad(line_no: int, message: str) -> None:
        report.rows_bad += 1
        if len(report.bad_samples) < BAD_ROW_SAMPLES:
            report.bad_samples.append((line_no, message))
        if report_stream is not None:
            report_stream.write(f"{line_no}\t{message}\n")

    await _create_staging(conn, fmt)
    batch: list[tuple[Any, ...]] = []
    try:
        for line_no, line in read_lines(path, progress.advance):
            if line_no == 1:
                if isinstance(line, BadRow):
                    raise ImportFileError(f"{path.name}: the header line is {line}")
                fmt.check_header(line.split("|"))
                continue
            if isinstance(line, str) and not line.strip():
                continue
            report.rows_read += 1
            if isinstance(line, BadRow):
                bad(line_no, str(line))
                continue
            try:
                batch.append(fmt.parse(line_no, split_fields(line, fmt.field_count)))
            except BadRow as exc:
                bad(line_no, str(exc))
                continue
            except ValueError as exc:  # validators' InvalidIdentifier and friends
                bad(line_no, str(exc))
                continue
            if len(batch) >= BATCH_ROWS:
                await bulk_insert(conn, fmt.staging_table, column_names, batch)
                report.rows_ok += len(batch)
                batch = []
        await bulk_insert(conn, fmt.staging_table, column_names, batch)
        report.rows_ok += len(batch)
    finally:
        progress.close()
    if report.rows_read == 0:
        raise ImportFileError(f"{path.name} has a header but no rows; nothing was changed")
    report.retire_skipped = report.rows_bad * 2 > report.rows_read
    await fmt.merge(conn, report, run_id)
    await conn.execute(text(f"DROP TABLE IF EXISTS {fmt.staging_table}"))
    return report


def check_header(kind: str, fields: list[str], expected_count: int, first_word: str) -> None:
    """Refuse a file whose header is not the layout we expect: a wrong file changes nothing."""
    if fields and fields[-1].strip() == "" and len(fields) == expected_count + 1:
        fields = fields[:-1]
    if len(fields) != expected_count:
        raise ImportFileError(f"the header has {len(fields)} columns where a {kind} file has {expected_count}: is this the right file?")
    if not fields[0].strip().lower().startswith(first_word):
        raise ImportFileError(f"the header starts with {fields[0]!r}, not with a {kind} column name")
