"""The CNAM's population file: every insured person gets a patient profile, in bulk.

Layout (UTF-8, `|`-separated, one header line, documented in the README):

    INS|Nom|Prénoms|Date de naissance|Sexe|Courriel|INS des représentants légaux|Statut

`Date de naissance` is AAAA-MM-JJ, `Sexe` M/F/I, `Courriel` optional, the representatives
(a minor's legal guardians) are INS separated by commas, `Statut` is empty (or `actif`),
`opposition` (the person opposed the creation of their profile) or `cloture` (closed).

The file arrives signed and encrypted (OpenPGP); this module reads a `Source` (decrypted
lines, and a `finish()` that refuses the file when its signature is not the CNAM's), so
that nothing is applied before the signature was checked. Two passes, both streaming:

1. **Staging.** Each line is checked and becomes a row of a temporary staging table,
   loaded by batches through the driver's bulk path (COPY on PostgreSQL, executemany on
   SQLite); a bad line is reported with its number and skipped. A line in the usual shape
   (fifteen plain digits, names already trimmed, a lower-case address...) is checked by a
   few string tests (`_fast_row`); anything else takes the validators' long way, which
   gives the same values or explains the refusal. Then `source.finish()`.
2. **Merge**, in the caller's transaction (all or nothing), by set-based statements: the
   whole file first (a person listed twice keeps the last line; an email shared by two
   people in the file or already used by another profile is not recorded), then one range
   of lines at a time (`BATCH_ROWS`), three statements each:

   - profiles that exist and changed are updated (an activated patient keeps the email
     they chose; unchanged rows are not rewritten);
   - new profiles are inserted with their `PAT` mailbox (one statement on PostgreSQL) and
     the ones in the `created` state handed to `on_created` (the wiring connects the
     webmail's bulk provisional codes and the letters file to it); no key, no certificate,
     no file: patients are signed for with the operator's certificate (docs/architecture.md);
   - oppositions and closures recorded (never undone by a later file: the person's choice).

   Guardianships are then added and removed to match the file for the minors it lists.

Nothing inserts a row that a unique index could refuse, so no statement needs
`ON CONFLICT`: an `INSERT ... ON CONFLICT` draws a sequence value for every row it is
given, and a monthly national re-import would burn 66 million patient ids each time.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import _ADDRESS_FAST, InvalidIdentifier, validate_ins, validate_mailbox_address
from caducee.annuaire.importing import BAD_ROW_SAMPLES, ImportFileError, _Progress, bulk_insert, check_header
from caducee.annuaire.merge import staging_ddl

POPULATION_COLUMNS = ["INS", "Nom", "Prénoms", "Date de naissance", "Sexe", "Courriel", "INS des représentants légaux", "Statut"]
BATCH_ROWS = 50_000
STATUSES = {"": "", "actif": "", "active": "", "opposition": "opposed", "opposé": "opposed", "cloture": "closed", "clôture": "closed"}
SEXES = {"M", "F", "I"}
READ_BLOCK = 1 << 20

ROWS = "population_staging"
GUARDIANS = "population_guardians"
PAIRS = "population_pairs"
# One row per accepted line, as it will be stored: `guardians` the representatives' INS
# joined by commas, `status` NULL (active), 'opposed' or 'closed', `email` NULL when absent.
ROW_COLUMNS = (
    ("line_no", "BIGINT"),
    ("ins", "TEXT"),
    ("last_name", "TEXT"),
    ("first_names", "TEXT"),
    ("birth_date", "TEXT"),
    ("sex", "TEXT"),
    ("email", "TEXT"),
    ("guardians", "TEXT"),
    ("status", "TEXT"),
)
_ROW_NAMES = [name for name, _ in ROW_COLUMNS]
# PostgreSQL settings for the merge (its transaction only, restored after). No JIT: the
# whole-file statements are estimated costly enough to be compiled, and compiling took
# longer than running them. A larger work_mem keeps a range's RETURNING rows and sorts in
# memory.
_MERGE_SETTINGS = {"jit": "off", "work_mem": "64MB"}
# For the ranges and the guardians: each range is a few thousand rows against a table that
# grows by them and whose statistics, gathered before the import, say it is small. Planned
# from those, the probes by INS became a hash of the whole table per range, quadratic in
# the file; every statement there is a probe of a unique index per row.
_PROBES_ONLY = {"enable_hashjoin": "off", "enable_mergejoin": "off"}


class Source(Protocol):
    """Where the lines come from: a plain file, or a decrypted OpenPGP stream."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int:  # bytes, for the progress bar
        ...

    def lines(self, progress: Callable[[int], None]) -> Iterator[bytes]: ...

    def finish(self) -> None:
        """After the last line: raise ImportFileError if the file must not be applied."""


@dataclass
class PlainSource:
    """An unencrypted file (tests, trials): nothing to verify."""

    path: Path

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def size(self) -> int:
        return Path(self.path).stat().st_size

    def lines(self, progress: Callable[[int], None]) -> Iterator[bytes]:
        """The lines, each with its end of line, read a block at a time."""
        with open(self.path, "rb") as handle:
            rest = b""
            while block := handle.read(READ_BLOCK):
                progress(len(block))
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    yield line + b"\n"
            if rest:
                yield rest

    def finish(self) -> None:
        return None


class NewProfile(NamedTuple):
    """A profile this import created, for its provisional code and its letter."""

    patient_id: int
    ins: str
    first_names: str
    last_name: str


class OnCreated(Protocol):
    """Where the created profiles go, a range at a time (the wiring: `webmail.letters.LetterCodes`).

    Two steps, so that the work without the database overlaps the database's: `prepare`
    runs while the server inserts the next range (a profile's code, its hash, its letter
    line cost the client about as much as parsing its line), `write` stores what it made,
    on the import's connection and in its transaction, once that insert has returned."""

    def prepare(self, dialect: str, profiles: list[NewProfile]) -> Any: ...

    async def write(self, conn: AsyncConnection, prepared: Any) -> None: ...


@dataclass
class PopulationReport:
    file_name: str
    rows_read: int = 0
    rows_ok: int = 0
    rows_bad: int = 0
    duplicates: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    opposed: int = 0
    closed: int = 0
    emails_dropped: int = 0
    guardians_unknown: int = 0
    guardianships_added: int = 0
    guardianships_removed: int = 0
    profiles_for_letters: int = 0
    bad_samples: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"population import of {self.file_name}: {self.rows_read} rows read, {self.rows_ok} accepted, {self.rows_bad} refused; "
            f"{self.inserted} profiles created, {self.updated} changed, {self.unchanged} unchanged; "
            f"{self.opposed} oppositions and {self.closed} closures recorded; {self.profiles_for_letters} provisional codes issued",
            f"guardianships: {self.guardianships_added} added, {self.guardianships_removed} removed, "
            f"{self.guardians_unknown} representatives not found",
        ]
        if self.duplicates:
            lines.append(f"{self.duplicates} INS listed more than once (the last line of each was kept)")
        if self.emails_dropped:
            lines.append(f"{self.emails_dropped} emails already used by another profile were not recorded")
        for line_no, message in self.bad_samples:
            lines.append(f"  line {line_no}: {message}")
        if self.rows_bad > len([s for s in self.bad_samples if not s[1].startswith("warning")]):
            lines.append("  ... see the report file for every line")
        return "\n".join(lines)


class _BadRow(ValueError):
    pass


def _parse(line_no: int, line: str) -> tuple[Any, ...]:
    """The long way: every field through its validator, which says what is wrong."""
    if "\x00" in line:
        raise _BadRow("the line contains a NUL character")
    fields = line.split("|")
    if len(fields) == len(POPULATION_COLUMNS) + 1 and fields[-1] == "":
        fields.pop()
    if len(fields) != len(POPULATION_COLUMNS):
        raise _BadRow(f"expected {len(POPULATION_COLUMNS)} columns separated by |, found {len(fields)}")
    ins = validate_ins(fields[0])
    last_name, first_names = fields[1].strip(), " ".join(fields[2].split())
    if not last_name or not first_names:
        raise _BadRow("the last name and the first names are required")
    try:
        born = date.fromisoformat(fields[3].strip())
    except ValueError:
        raise _BadRow(f"the birth date {fields[3].strip()!r} is not AAAA-MM-JJ") from None
    sex = fields[4].strip().upper()
    if sex not in SEXES:
        raise _BadRow(f"sex {sex!r} is not M, F or I")
    given_email = fields[5].strip()
    email = validate_mailbox_address(given_email) if given_email else None
    status = STATUSES.get(fields[7].strip().lower())
    if status is None:
        raise _BadRow(f"status {fields[7].strip()!r} is not empty, actif, opposition or cloture")
    representatives = [validate_ins(part) for part in fields[6].split(",") if part.strip()]
    if ins in representatives:
        raise _BadRow("a person cannot be their own legal representative")
    return (line_no, ins, last_name, first_names, born.isoformat(), sex, email, ",".join(representatives) or None, status or None)


_PLAIN_INS = re.compile(r"[1-8][0-9]{14}").fullmatch  # as validate_ins's first test, key checked apart
_TRIMMED_WORDS = re.compile(r"\S+(?: \S+)*").fullmatch  # what " ".join(value.split()) leaves as it is
_LOWER_ADDRESS = re.compile(_ADDRESS_FAST.pattern.replace("A-Za-z", "a-z")).match  # validate_mailbox_address leaves it as it is
_STATUS_OF = {given: status or None for given, status in STATUSES.items() if given}


def _fast_row(line_no: int, line: str, fields: list[str]) -> tuple[Any, ...] | None:
    """The staging row of a line already in the usual shape, else None (then `_parse`).

    Each test accepts only values that `_parse` would accept unchanged, so both give the
    same row; this one costs about a third. A population file is 66 million such lines."""
    ins, last_name, first_names, born, sex, email, guardians, status = fields
    if not (
        _PLAIN_INS(ins)
        and (number := int(ins)) % 100 == 97 - number // 100 % 97
        and last_name
        and last_name.strip() == last_name
        and _TRIMMED_WORDS(first_names)
        and len(born) == 10
        and born[4] == "-"
        and born[7] == "-"
        and sex in SEXES
        and "\x00" not in line
        and (not email or _LOWER_ADDRESS(email))
    ):
        return None
    try:
        date.fromisoformat(born)  # ten characters, dashes at 5 and 8: only AAAA-MM-JJ gets through
    except ValueError:
        return None
    if guardians:
        for guardian in guardians.split(","):
            if guardian == ins or not _PLAIN_INS(guardian) or (number := int(guardian)) % 100 != 97 - number // 100 % 97:
                return None
    if status:
        if status not in _STATUS_OF:
            return None
        return (line_no, ins, last_name, first_names, born, sex, email or None, guardians or None, _STATUS_OF[status])
    return (line_no, ins, last_name, first_names, born, sex, email or None, guardians or None, None)


async def import_population(
    conn: AsyncConnection,
    source: Source,
    *,
    patient_domain: str,
    on_created: OnCreated | None = None,
    report_stream: TextIO | None = None,
    progress_stream: TextIO | None = None,
) -> PopulationReport:
    """Read `source` into staging, check it (`source.finish()`), then merge; the caller commits."""
    report = PopulationReport(source.name)

    def bad(line_no: int, message: str, *, refused: bool = True) -> None:
        if refused:
            report.rows_bad += 1
        if len(report.bad_samples) < BAD_ROW_SAMPLES:
            report.bad_samples.append((line_no, message if refused else f"warning: {message}"))
        if report_stream is not None:
            report_stream.write(f"{line_no}\t{message}\n")

    for table in (ROWS, GUARDIANS, PAIRS):
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    await conn.execute(text(staging_ddl(conn.dialect.name, ROWS, ROW_COLUMNS)))
    progress = _Progress(source.size, f"population {source.name}", progress_stream)
    try:
        windows = await _stage(conn, source, report, bad, progress.advance)
    finally:
        progress.close()
    source.finish()  # an unsigned, foreign or altered file stops here: nothing was merged
    if report.rows_read == 0:
        raise ImportFileError(f"{source.name} has a header but no rows; nothing was changed")
    await _merge(conn, report, windows, patient_domain.lower(), on_created, bad, progress_stream)
    for table in (ROWS, GUARDIANS, PAIRS):
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    return report


async def _stage(
    conn: AsyncConnection, source: Source, report: PopulationReport, bad: Callable[..., None], progress: Callable[[int], None]
) -> list[tuple[int, bool]]:
    """Every accepted line into the staging table, a window of BATCH_ROWS lines at a time;
    for each window (lines 2 to BATCH_ROWS + 1, and so on), the rows staged and whether one
    of them records an opposition or a closure: the merge's ranges are these windows."""
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    windows: list[tuple[int, bool]] = []
    window_end = 1 + BATCH_ROWS
    read = 0
    columns = len(POPULATION_COLUMNS)
    for line_no, raw in enumerate(source.lines(progress), start=1):
        if line_no > window_end:
            await bulk_insert(conn, ROWS, _ROW_NAMES, rows)
            windows.append((len(rows), any(row[8] for row in rows)))
            rows.clear()
            window_end += BATCH_ROWS
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            if line_no == 1:
                raise ImportFileError("the header line is not valid UTF-8") from None
            read += 1
            bad(line_no, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1})")
            continue
        if line_no == 1:
            check_header("population", line.lstrip("\ufeff").split("|"), columns, "ins")
            continue
        fields = line.split("|")
        row = _fast_row(line_no, line, fields) if len(fields) == columns else None
        if row is None:
            if not line.strip():
                continue
            try:
                row = _parse(line_no, line)
            except (_BadRow, InvalidIdentifier) as exc:
                read += 1
                bad(line_no, str(exc))
                continue
        read += 1
        append(row)
    await bulk_insert(conn, ROWS, _ROW_NAMES, rows)
    windows.append((len(rows), any(row[8] for row in rows)))
    report.rows_read, report.rows_ok = read, sum(staged for staged, _ in windows)
    return windows


async def _configure(conn: AsyncConnection, settings: dict[str, str]) -> dict[str, str]:
    """Set PostgreSQL settings for the rest of the transaction; the values they replace."""
    previous = {}
    for name, value in settings.items():
        previous[name] = (await conn.execute(text("SELECT current_setting(:n)"), {"n": name})).scalar_one()
        await conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
    return previous


def _first_word(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"split_part({column}, ' ', 1)"
    return f"(CASE WHEN instr({column}, ' ') > 0 THEN substr({column}, 1, instr({column}, ' ') - 1) ELSE {column} END)"


async def _driver_fetch(conn: AsyncConnection, statement: str, params: Sequence[Any]) -> list[Sequence[Any]]:
    """Rows of `statement` (the driver's placeholders) through the raw driver, without
    SQLAlchemy's per-row objects: the merge reads back every profile it creates."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None, "a live connection has its driver's connection"
    if conn.dialect.name == "postgresql":
        return list(await driver.fetch(statement, *params))
    return list(await driver.execute_fetchall(statement, tuple(params)))


async def _merge(
    conn: AsyncConnection,
    report: PopulationReport,
    windows: list[tuple[int, bool]],
    domain: str,
    on_created: OnCreated | None,
    bad: Callable[..., None],
    progress_stream: TextIO | None,
) -> None:
    dialect = conn.dialect.name
    postgres = dialect == "postgresql"
    now = datetime.now(UTC)
    restore = await _configure(conn, _MERGE_SETTINGS) if postgres else {}
    if postgres:  # ranges of lines read through a BRIN index (the rows are in line order), planned with real counts
        await conn.execute(text(f"CREATE INDEX ix_{ROWS}_line_no ON {ROWS} USING brin (line_no)"))
        await conn.execute(text(f"ANALYZE {ROWS}"))

    # The whole file first. A person listed twice: the last line is kept, the others dropped.
    report.duplicates = int(
        (
            await conn.execute(
                text(f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {ROWS} GROUP BY ins HAVING count(*) > 1) d")
            )
        ).scalar_one()
    )
    if report.duplicates:
        await conn.execute(
            text(
                f"DELETE FROM {ROWS} WHERE line_no IN (SELECT r.line_no FROM {ROWS} r JOIN "
                f"(SELECT ins, max(line_no) AS kept FROM {ROWS} GROUP BY ins HAVING count(*) > 1) d ON d.ins = r.ins WHERE r.line_no < d.kept)"
            )
        )
    distinct = report.rows_ok - report.duplicates

    # An email is unique among profiles: one already taken (a family's shared address, say)
    # is not recorded, and the line says so; the profile is created all the same.
    taken = (
        f"email IS NOT NULL AND (email IN (SELECT email FROM {ROWS} WHERE email IS NOT NULL GROUP BY email HAVING min(ins) <> max(ins)) "
        f"OR EXISTS (SELECT 1 FROM patients p WHERE p.email = {ROWS}.email AND p.ins <> {ROWS}.ins))"
    )
    for line_no, email in (await conn.execute(text(f"SELECT line_no, email FROM {ROWS} WHERE {taken} ORDER BY line_no"))).all():
        report.emails_dropped += 1
        bad(line_no, f"the email {email} is already used by another profile: not recorded", refused=False)
    if report.emails_dropped:
        await conn.execute(text(f"UPDATE {ROWS} SET email = NULL WHERE {taken}"))

    distinct_from = "IS DISTINCT FROM" if postgres else "IS NOT"
    birth = "CAST(s.birth_date AS DATE)" if postgres else "s.birth_date"
    # The time written, as SQLAlchemy's DateTime writes it on SQLite (UTC, no offset).
    stamp: datetime | str = now if postgres else now.strftime("%Y-%m-%d %H:%M:%S.%f")
    changed = " OR ".join(f"patients.{c} {distinct_from} s.{c}" for c in ("last_name", "first_names", "sex"))
    update = text(
        f"UPDATE patients SET last_name = s.last_name, first_names = s.first_names, birth_date = {birth}, sex = s.sex, "
        "email = CASE WHEN patients.status = 'activated' THEN patients.email ELSE s.email END, updated_at = :now "
        f"FROM {ROWS} s WHERE s.line_no BETWEEN :first AND :last AND patients.ins = s.ins "
        f"AND ({changed} OR patients.birth_date {distinct_from} {birth} "
        f"OR (patients.status <> 'activated' AND patients.email {distinct_from} s.email))"
    )
    # $1 the time, $2 and $3 the range of lines, $4 the patient domain (PostgreSQL's numbering; SQLite's in order)
    moment = "CAST($1 AS TIMESTAMPTZ)" if postgres else "?"
    insert = (
        "INSERT INTO patients (ins, last_name, first_names, birth_date, sex, status, email, updated_at) "
        f"SELECT s.ins, s.last_name, s.first_names, {birth}, s.sex, coalesce(s.status, 'created'), s.email, {moment} FROM {ROWS} s "
        f"WHERE s.line_no BETWEEN {'$2 AND $3' if postgres else '? AND ?'} AND NOT EXISTS (SELECT 1 FROM patients p WHERE p.ins = s.ins) "
        "ORDER BY s.ins RETURNING id, ins, first_names, last_name, status"  # in INS order: each index is written page after page
    )
    domain_value = "$4" if postgres else ":domain"
    mailbox = (
        "INSERT INTO mailboxes (address, type, domain, patient_id, service, display_name, liste_rouge, dematerialisation, source, "
        "search_text, profession_code, postcode, city_search, seen_in_run, active, updated_at) "
        f"SELECT lower(n.ins) || '@' || {domain_value}, 'PAT', {domain_value}, n.id, '', "
        f"{_first_word(dialect, 'n.first_names')} || ' ' || n.last_name, false, false, 'population', '', '', '', '', 0, true, "
        f"{moment if postgres else ':now'} FROM "
    )
    if postgres:  # one statement: the new profiles, their mailboxes, and what the hand-over needs
        insert = f"WITH n AS ({insert}), boxes AS ({mailbox} n) SELECT id, ins, first_names, last_name, status FROM n"
    # SQLite: the ids it gives are in order, and this transaction is the database's only writer.
    boxes = text(f"{mailbox} patients n WHERE n.id BETWEEN :low AND :high")
    statuses = text(
        f"UPDATE patients SET status = s.status, updated_at = :now FROM {ROWS} s "
        "WHERE s.line_no BETWEEN :first AND :last AND s.status IS NOT NULL AND patients.ins = s.ins "
        "AND patients.status <> 'closed' AND (s.status = 'closed' OR patients.status <> 'opposed') RETURNING patients.status"
    )

    probes = await _configure(conn, _PROBES_ONLY) if postgres else {}
    progress = _Progress(distinct, "population merge", progress_stream, unit="rows")
    try:
        handed: list[NewProfile] = []  # the previous range's created profiles, prepared during this range's insert
        for window, (staged, with_status) in enumerate(windows):
            if not staged:
                continue
            first = 2 + window * BATCH_ROWS
            last = first + BATCH_ROWS - 1
            span = {"first": first, "last": last, "now": stamp}
            inserting = asyncio.ensure_future(_driver_fetch(conn, insert, (now, first, last, domain) if postgres else (stamp, first, last)))
            prepared = None
            if handed and on_created is not None:
                await asyncio.sleep(0)  # the statement is sent; the server works on it while the client prepares
                try:
                    prepared = on_created.prepare(dialect, handed)
                except BaseException:
                    await asyncio.gather(inserting, return_exceptions=True)  # the connection free again, then the error
                    raise
            new = await inserting
            if prepared is not None and on_created is not None:
                await _hand_over(conn, report, on_created, prepared, len(handed))
            if new and not postgres:
                ids = [row[0] for row in new]
                await conn.execute(boxes, {"domain": domain, "now": stamp, "low": min(ids), "high": max(ids)})
            if len(new) < staged or report.duplicates:  # some were known: the ones that changed are rewritten
                updated = int((await conn.execute(update, span)).rowcount or 0)
                report.updated += updated
            report.inserted += len(new)
            handed = []
            for row in new:
                if row[4] == "created":
                    handed.append(NewProfile(row[0], row[1], row[2], row[3]))
                elif row[4] == "opposed":
                    report.opposed += 1
                else:
                    report.closed += 1
            for (status,) in (await conn.execute(statuses, span)).all() if with_status else ():
                if status == "opposed":
                    report.opposed += 1
                else:
                    report.closed += 1
            progress.advance(staged)
        if handed and on_created is not None:
            await _hand_over(conn, report, on_created, on_created.prepare(dialect, handed), len(handed))
    finally:
        progress.close()
    report.unchanged = distinct - report.inserted - report.updated
    await _guardians(conn, report, bad, stamp, probes)
    if restore:  # as the caller's transaction had them
        await _configure(conn, restore)


async def _hand_over(conn: AsyncConnection, report: PopulationReport, on_created: OnCreated, prepared: Any, count: int) -> None:
    await on_created.write(conn, prepared)
    report.profiles_for_letters += count


async def _guardians(
    conn: AsyncConnection, report: PopulationReport, bad: Callable[..., None], now: datetime | str, probes: dict[str, str]
) -> None:
    """Each minor the file lists gets exactly the guardians its line names (those with a profile).

    The representatives are looked up by index (`probes` still set); then the planner's
    joins are back (`probes` restored) for the guardianships to remove, which are matched
    against the whole file."""
    if conn.dialect.name == "postgresql":
        each = f"SELECT s.line_no, s.ins AS minor_ins, g.ins AS guardian_ins FROM {ROWS} s CROSS JOIN LATERAL unnest(string_to_array(s.guardians, ',')) AS g(ins)"
    else:
        each = f"""SELECT s.line_no, s.ins AS minor_ins, g.value AS guardian_ins FROM {ROWS} s, json_each('["' || replace(s.guardians, ',', '","') || '"]') g"""
    await conn.execute(text(f"CREATE TEMPORARY TABLE {GUARDIANS} AS {each} WHERE s.guardians IS NOT NULL"))
    unknown = await conn.execute(
        text(
            f"SELECT g.line_no, g.guardian_ins FROM {GUARDIANS} g WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.ins = g.guardian_ins) "
            "ORDER BY g.line_no"
        )
    )
    for line_no, guardian in unknown.all():
        report.guardians_unknown += 1
        bad(line_no, f"legal representative {guardian} has no profile: not linked", refused=False)
    await conn.execute(
        text(
            f"CREATE TEMPORARY TABLE {PAIRS} AS SELECT DISTINCT g.id AS guardian_id, m.id AS minor_id FROM {GUARDIANS} x "
            "JOIN patients m ON m.ins = x.minor_ins JOIN patients g ON g.ins = x.guardian_ins"
        )
    )
    await conn.execute(text(f"CREATE INDEX ix_{PAIRS} ON {PAIRS} (minor_id, guardian_id)"))
    if probes:
        await _configure(conn, probes)
    if (await conn.execute(text("SELECT EXISTS (SELECT 1 FROM guardianships)"))).scalar():  # nothing to remove on a first import
        removed = await conn.execute(
            text(
                f"DELETE FROM guardianships WHERE NOT EXISTS (SELECT 1 FROM {PAIRS} k WHERE k.guardian_id = guardianships.guardian_id "
                "AND k.minor_id = guardianships.minor_id) "
                f"AND minor_id IN (SELECT p.id FROM patients p JOIN {ROWS} r ON r.ins = p.ins)"
            )
        )
        report.guardianships_removed = int(removed.rowcount or 0)
    added = await conn.execute(
        text(
            f"INSERT INTO guardianships (guardian_id, minor_id, since) SELECT k.guardian_id, k.minor_id, :now FROM {PAIRS} k "
            "WHERE NOT EXISTS (SELECT 1 FROM guardianships e WHERE e.guardian_id = k.guardian_id AND e.minor_id = k.minor_id)"
        ),
        {"now": now},
    )
    report.guardianships_added = int(added.rowcount or 0)
