"""A campaign's target file: INS from the CNAM, signed and encrypted (OpenPGP).

Layout: a header line `INS`, then one INS per line (15 characters with the key; spaces
allowed). The file is streamed from gpg into a staging table in batches (memory stays
flat at 10 million lines), and only when the signature proved the CNAM's is it resolved,
by three set-based statements: each distinct INS once (with the profile it names, or none),
duplicates and unknown INS reported with their line numbers. Bad lines never stop the
campaign; a file whose signature is missing, foreign or broken changes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import column, insert, literal, select, table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import InvalidIdentifier, validate_ins
from caducee.annuaire.targets import by_ins
from caducee.campaigns.models import CampaignFileProblem, CampaignTarget

STAGING = "campaign_file_staging"
BATCH = 10_000
_STAGING = table(STAGING, column("line_no"), column("ins"))


class TargetFileError(ValueError):
    """The file as a whole is refused (its header, its signature); nothing was kept."""


class Source(Protocol):
    name: str
    size: int

    def lines(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]: ...

    def finish(self) -> None: ...


@dataclass
class FileReport:
    rows: int = 0
    problems: dict[str, int] = field(default_factory=lambda: {"invalid": 0, "unknown": 0, "duplicate": 0})


async def _numbered(lines: Iterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """The lines with their numbers, read in a thread by blocks: gpg's output is waited for
    off the event loop, which keeps serving the webmail meanwhile."""
    number = 0

    def block() -> list[bytes]:
        return list(itertools.islice(lines, BATCH))

    while True:
        chunk = await asyncio.to_thread(block)
        if not chunk:
            return
        for raw in chunk:
            number += 1
            yield number, raw


async def load(conn: AsyncConnection, campaign_id: int, source: Source, progress: Callable[[int], None] | None = None) -> FileReport:
    """Stage, verify (`source.finish()` raises when the signature is not the CNAM's), resolve."""
    report = FileReport()
    big = "BIGINT" if conn.dialect.name == "postgresql" else "INTEGER"
    await conn.execute(text(f"DROP TABLE IF EXISTS {STAGING}"))
    await conn.execute(text(f"CREATE TEMPORARY TABLE {STAGING} (line_no {big} NOT NULL, ins VARCHAR(15) NOT NULL)"))
    rows: list[dict[str, object]] = []
    invalid: list[dict[str, object]] = []
    async for line_no, raw in _numbered(source.lines(progress)):
        line = raw.decode("utf-8", "replace").strip().lstrip("\ufeff")
        if line_no == 1:
            if line.upper() != "INS":
                raise TargetFileError("the first line of a target file is the header INS")
            continue
        if not line:
            continue
        report.rows += 1
        try:
            rows.append({"line_no": line_no, "ins": validate_ins(line)})
        except InvalidIdentifier as exc:
            invalid.append({"campaign_id": campaign_id, "line_no": line_no, "problem": "invalid", "detail": str(exc)[:300]})
        if len(rows) >= BATCH:
            await conn.execute(insert(_STAGING), rows)
            rows = []
        if len(invalid) >= BATCH:
            await conn.execute(insert(CampaignFileProblem.__table__), invalid)
            report.problems["invalid"] += len(invalid)
            invalid = []
    if rows:
        await conn.execute(insert(_STAGING), rows)
    if invalid:
        await conn.execute(insert(CampaignFileProblem.__table__), invalid)
        report.problems["invalid"] += len(invalid)
    source.finish()  # an unsigned, foreign or altered file stops here; the caller rolls back

    await conn.execute(text(f"CREATE INDEX ix_{STAGING} ON {STAGING} (ins, line_no)"))
    duplicate = await conn.execute(
        text(
            "INSERT INTO campaign_file_problems (campaign_id, line_no, problem, detail) "
            f"SELECT :campaign, s.line_no, 'duplicate', s.ins FROM {STAGING} s "
            f"WHERE s.line_no NOT IN (SELECT min(line_no) FROM {STAGING} GROUP BY ins)"
        ),
        {"campaign": campaign_id},
    )
    report.problems["duplicate"] = int(duplicate.rowcount or 0)
    firsts = select(_STAGING.c.ins).distinct().subquery("firsts")
    resolved = by_ins(firsts).subquery("resolved")
    await conn.execute(
        insert(CampaignTarget.__table__).from_select(
            ["campaign_id", "ins", "patient_id"], select(literal(campaign_id), resolved.c.ins, resolved.c.patient_id)
        )
    )
    unknown = await conn.execute(
        text(
            "INSERT INTO campaign_file_problems (campaign_id, line_no, problem, detail) "
            f"SELECT :campaign, (SELECT min(s.line_no) FROM {STAGING} s WHERE s.ins = t.ins), 'unknown', t.ins "
            "FROM campaign_targets t WHERE t.campaign_id = :campaign AND t.patient_id IS NULL"
        ),
        {"campaign": campaign_id},
    )
    report.problems["unknown"] = int(unknown.rowcount or 0)
    await conn.execute(text(f"DROP TABLE IF EXISTS {STAGING}"))
    return report
