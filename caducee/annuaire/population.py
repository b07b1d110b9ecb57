"""The CNAM's population file: every insured person gets a patient profile, in bulk.

Layout (UTF-8, `|`-separated, one header line, documented in the README):

    INS|Nom|Prénoms|Date de naissance|Sexe|Courriel|INS des représentants légaux|Statut

`Date de naissance` is AAAA-MM-JJ, `Sexe` M/F/I, `Courriel` optional, the representatives
(a minor's legal guardians) are INS separated by commas, `Statut` is empty (or `actif`),
`opposition` (the person opposed the creation of their profile) or `cloture` (closed).

The file arrives signed and encrypted (OpenPGP); this module reads a `Source` (decrypted
lines, and a `finish()` that refuses the file when its signature is not the CNAM's), so
that nothing is applied before the signature was checked. It streams: lines are parsed
and bulk-loaded into temporary staging tables by batches, then merged by a few set-based
statements in the caller's transaction (all or nothing):

- profiles upserted by INS (a re-import rewrites only rows whose values changed; an
  activated patient keeps the email they chose);
- oppositions and closures recorded (never undone by a later file: the person's choice);
- one `PAT` mailbox per new profile; no key, no certificate, no file: patients are signed
  for with the operator's certificate (docs/architecture.md says why);
- guardianships added and removed to match the file for the minors it lists;
- the new profiles in the `created` state handed, in batches, to `on_created` (the wiring
  connects the webmail's bulk provisional codes and the letters file to it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol, TextIO

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import InvalidIdentifier, validate_ins, validate_mailbox_address
from caducee.annuaire.importing import BAD_ROW_SAMPLES, ImportFileError, _Progress, bulk_insert, check_header
from caducee.annuaire.merge import staging_ddl

POPULATION_COLUMNS = ["INS", "Nom", "Prénoms", "Date de naissance", "Sexe", "Courriel", "INS des représentants légaux", "Statut"]
BATCH_ROWS = 10_000
STATUSES = {"": "", "actif": "", "active": "", "opposition": "opposed", "opposé": "opposed", "cloture": "closed", "clôture": "closed"}
SEXES = {"M", "F", "I"}

ROWS = "population_staging"
GUARDIANS = "population_guardians"
NEW = "population_new"
PAIRS = "population_pairs"
ROW_COLUMNS = (
    ("line_no", "BIGINT"),
    ("ins", "TEXT"),
    ("last_name", "TEXT"),
    ("first_names", "TEXT"),
    ("birth_date", "TEXT"),
    ("sex", "TEXT"),
    ("email", "TEXT"),
    ("status", "TEXT"),
)
GUARDIAN_COLUMNS = (("line_no", "BIGINT"), ("minor_ins", "TEXT"), ("guardian_ins", "TEXT"))


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
        with open(self.path, "rb") as handle:
            for raw in handle:
                progress(len(raw))
                yield raw

    def finish(self) -> None:
        return None


@dataclass(frozen=True)
class NewProfile:
    """A profile this import created, for its provisional code and its letter."""

    patient_id: int
    ins: str
    first_names: str
    last_name: str


OnCreated = Callable[[AsyncConnection, list[NewProfile]], Awaitable[None]]


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


def _parse(line_no: int, line: str, rows: list[tuple], guardians: list[tuple]) -> None:
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
    rows.append((line_no, ins, last_name, first_names, born.isoformat(), sex, email, status))
    guardians.extend((line_no, ins, guardian) for guardian in representatives)


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

    dialect = conn.dialect.name
    for table in (ROWS, GUARDIANS):
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    await conn.execute(text(staging_ddl(dialect, ROWS, ROW_COLUMNS)))
    # Not staging_ddl: its line_no is SQLite's rowid, and a minor with two guardians has two rows of one line.
    await conn.execute(text(f"CREATE TEMPORARY TABLE {GUARDIANS} ({', '.join(f'{n} {t}' for n, t in GUARDIAN_COLUMNS)})"))
    progress = _Progress(source.size, f"population {source.name}", progress_stream)
    rows: list[tuple] = []
    guardians: list[tuple] = []
    try:
        for line_no, raw in enumerate(source.lines(progress.advance), start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                if line_no == 1:
                    raise ImportFileError("the header line is not valid UTF-8") from None
                report.rows_read += 1
                bad(line_no, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start + 1})")
                continue
            if line_no == 1:
                check_header("population", line.lstrip("\ufeff").split("|"), len(POPULATION_COLUMNS), "ins")
                continue
            if not line.strip():
                continue
            report.rows_read += 1
            try:
                _parse(line_no, line, rows, guardians)
            except (_BadRow, InvalidIdentifier) as exc:
                bad(line_no, str(exc))
                continue
            if len(rows) >= BATCH_ROWS:
                await _flush(conn, rows, guardians)
                report.rows_ok += len(rows)
                rows, guardians = [], []
        await _flush(conn, rows, guardians)
        report.rows_ok += len(rows)
    finally:
        progress.close()
    source.finish()  # an unsigned, foreign or altered file stops here: nothing was merged
    if report.rows_read == 0:
        raise ImportFileError(f"{source.name} has a header but no rows; nothing was changed")
    await _merge(conn, report, patient_domain, on_created, bad)
    for table in (ROWS, GUARDIANS, NEW, PAIRS):
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    return report


async def _flush(conn: AsyncConnection, rows: list[tuple], guardians: list[tuple]) -> None:
    await bulk_insert(conn, ROWS, [name for name, _ in ROW_COLUMNS], rows)
    await bulk_insert(conn, GUARDIANS, [name for name, _ in GUARDIAN_COLUMNS], guardians)


def _first_word(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"split_part({column}, ' ', 1)"
    return f"(CASE WHEN instr({column}, ' ') > 0 THEN substr({column}, 1, instr({column}, ' ') - 1) ELSE {column} END)"


async def _merge(
    conn: AsyncConnection, report: PopulationReport, domain: str, on_created: OnCreated | None, bad: Callable[..., None]
) -> None:
    dialect = conn.dialect.name
    now = {"now": datetime.now(UTC)}
    distinct = (await conn.execute(text(f"SELECT count(DISTINCT ins) FROM {ROWS}"))).scalar_one()
    report.duplicates = report.rows_ok - distinct
    last = f"x.line_no IN (SELECT max(line_no) FROM {ROWS} GROUP BY ins)" if report.duplicates else "true"

    # An email is unique among profiles: one already taken (a family's shared address, say)
    # is not recorded, and the line says so; the profile is created all the same.
    taken = (
        f"email IS NOT NULL AND (email IN (SELECT email FROM {ROWS} WHERE email IS NOT NULL GROUP BY email HAVING count(DISTINCT ins) > 1) "
        f"OR EXISTS (SELECT 1 FROM patients p WHERE p.email = {ROWS}.email AND p.ins <> {ROWS}.ins))"
    )
    for line_no, email in (await conn.execute(text(f"SELECT line_no, email FROM {ROWS} WHERE {taken} ORDER BY line_no"))).all():
        report.emails_dropped += 1
        bad(line_no, f"the email {email} is already used by another profile: not recorded", refused=False)
    if report.emails_dropped:
        await conn.execute(text(f"UPDATE {ROWS} SET email = NULL WHERE {taken}"))

    birth = "CAST(x.birth_date AS DATE)" if dialect == "postgresql" else "x.birth_date"
    select = f"SELECT x.ins, x.last_name, x.first_names, {birth}, x.sex, 'created', x.email, :now FROM {ROWS} x WHERE {last}"
    if dialect == "postgresql":
        select = f"SELECT DISTINCT ON (x.ins) x.ins, x.last_name, x.first_names, {birth}, x.sex, 'created', x.email, :now FROM {ROWS} x ORDER BY x.ins, x.line_no DESC"
    changed = " OR ".join(
        f"patients.{c} {'IS DISTINCT FROM' if dialect == 'postgresql' else 'IS NOT'} excluded.{c}"
        for c in ("last_name", "first_names", "birth_date", "sex")
    )
    email_changed = (
        f"(patients.status <> 'activated' AND patients.email {'IS DISTINCT FROM' if dialect == 'postgresql' else 'IS NOT'} excluded.email)"
    )
    written = await conn.execute(
        text(
            "INSERT INTO patients (ins, last_name, first_names, birth_date, sex, status, email, updated_at) "
            f"{select} ON CONFLICT (ins) DO UPDATE SET last_name = excluded.last_name, first_names = excluded.first_names, "
            "birth_date = excluded.birth_date, sex = excluded.sex, "
            "email = CASE WHEN patients.status = 'activated' THEN patients.email ELSE excluded.email END, updated_at = excluded.updated_at "
            f"WHERE {changed} OR {email_changed}"
        ),
        now,
    )
    for status, counter in (("opposed", "opposed"), ("closed", "closed")):
        keep = "('opposed', 'closed')" if status == "opposed" else "('closed')"
        recorded = await conn.execute(
            text(
                f"UPDATE patients SET status = :status, updated_at = :now WHERE status NOT IN {keep} "
                f"AND ins IN (SELECT x.ins FROM {ROWS} x WHERE x.status = :status AND {last})"
            ),
            {**now, "status": status},
        )
        setattr(report, counter, int(recorded.rowcount or 0))

    # New profiles are those without a mailbox yet: noted before their mailboxes are made.
    await conn.execute(text(f"DROP TABLE IF EXISTS {NEW}"))
    await conn.execute(
        text(
            f"CREATE TEMPORARY TABLE {NEW} AS SELECT p.id, p.ins, p.first_names, p.last_name, p.status FROM patients p "
            "WHERE NOT EXISTS (SELECT 1 FROM mailboxes m WHERE m.patient_id = p.id)"
        )
    )
    await conn.execute(text(f"CREATE INDEX ix_{NEW}_id ON {NEW} (id)"))
    display = f"{_first_word(dialect, 'n.first_names')} || ' ' || n.last_name"
    made = await conn.execute(
        text(
            "INSERT INTO mailboxes (address, type, domain, patient_id, service, display_name, liste_rouge, dematerialisation, source, "
            "search_text, profession_code, postcode, city_search, seen_in_run, active, updated_at) "
            f"SELECT lower(n.ins) || '@' || :domain, 'PAT', :domain, n.id, '', {display}, false, false, 'population', "
            f"'', '', '', '', 0, true, :now FROM {NEW} n ORDER BY n.id"
        ),
        {**now, "domain": domain.lower()},
    )
    report.inserted = int(made.rowcount or 0)
    report.updated = max(int(written.rowcount or 0) - report.inserted, 0)
    report.unchanged = distinct - report.inserted - report.updated

    await _guardians(conn, report, bad, now)
    if on_created is not None:
        await _hand_over(conn, report, on_created)


async def _guardians(conn: AsyncConnection, report: PopulationReport, bad: Callable[..., None], now: dict[str, datetime]) -> None:
    unknown = await conn.execute(
        text(
            f"SELECT g.line_no, g.guardian_ins FROM {GUARDIANS} g WHERE NOT EXISTS (SELECT 1 FROM patients p WHERE p.ins = g.guardian_ins) "
            "ORDER BY g.line_no"
        )
    )
    for line_no, guardian in unknown.all():
        report.guardians_unknown += 1
        bad(line_no, f"legal representative {guardian} has no profile: not linked", refused=False)
    latest = f"WHERE x.line_no IN (SELECT max(line_no) FROM {ROWS} GROUP BY ins)" if report.duplicates else ""
    await conn.execute(text(f"DROP TABLE IF EXISTS {PAIRS}"))
    await conn.execute(
        text(
            f"CREATE TEMPORARY TABLE {PAIRS} AS SELECT DISTINCT g.id AS guardian_id, m.id AS minor_id FROM {GUARDIANS} x "
            f"JOIN patients m ON m.ins = x.minor_ins JOIN patients g ON g.ins = x.guardian_ins {latest}"
        )
    )
    await conn.execute(text(f"CREATE INDEX ix_{PAIRS} ON {PAIRS} (minor_id, guardian_id)"))
    pairs = f"SELECT guardian_id, minor_id FROM {PAIRS}"
    removed = await conn.execute(
        text(
            f"DELETE FROM guardianships WHERE minor_id IN (SELECT p.id FROM patients p JOIN {ROWS} r ON r.ins = p.ins) "
            f"AND NOT EXISTS (SELECT 1 FROM ({pairs}) k WHERE k.guardian_id = guardianships.guardian_id AND k.minor_id = guardianships.minor_id)"
        )
    )
    report.guardianships_removed = int(removed.rowcount or 0)
    added = await conn.execute(
        text(
            f"INSERT INTO guardianships (guardian_id, minor_id, since) SELECT k.guardian_id, k.minor_id, :now FROM ({pairs}) k "
            "WHERE NOT EXISTS (SELECT 1 FROM guardianships e WHERE e.guardian_id = k.guardian_id AND e.minor_id = k.minor_id)"
        ),
        now,
    )
    report.guardianships_added = int(added.rowcount or 0)


async def _hand_over(conn: AsyncConnection, report: PopulationReport, on_created: OnCreated) -> None:
    """The created profiles, in batches of the new-profile table's id order (streamed)."""
    after = 0
    while True:
        rows = (
            await conn.execute(
                text(f"SELECT id, ins, first_names, last_name FROM {NEW} WHERE status = 'created' AND id > :after ORDER BY id LIMIT :n"),
                {"after": after, "n": BATCH_ROWS},
            )
        ).all()
        if not rows:
            return
        await on_created(conn, [NewProfile(int(r.id), r.ins, r.first_names, r.last_name) for r in rows])
        report.profiles_for_letters += len(rows)
        after = int(rows[-1].id)
