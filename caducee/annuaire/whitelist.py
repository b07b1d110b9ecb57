"""Import of the trust-space whitelist (liste blanche): the domains we may exchange mail with.

The published XML holds `Domaine` elements, each with `Nom`, `Description` and one or more
`DNCertificatOperateur`. Element names are matched without their namespace, so a change of
namespace in a new edition does not silently empty the trust space.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.importing import ImportFileError, ImportReport
from caducee.annuaire.models import TrustDomain

_DOMAIN_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def parse_whitelist(path: Path, report: ImportReport) -> dict[str, tuple[str, list[str]]]:
    """{domain: (description, operator DNs)} from the XML; bad entries go to the report."""
    domains: dict[str, tuple[str, list[str]]] = {}
    try:
        for _event, element in ET.iterparse(path, events=("end",)):
            if _local(element.tag) != "Domaine":
                continue
            report.rows_read += 1
            name, description, dns = "", "", []
            for child in element:
                tag, value = _local(child.tag), (child.text or "").strip()
                if tag == "Nom":
                    name = value.lower().rstrip(".")
                elif tag == "Description":
                    description = value
                elif tag == "DNCertificatOperateur" and value:
                    dns.append(value)
            element.clear()
            if not _DOMAIN_NAME.match(name):
                report.rows_bad += 1
                report.bad_samples.append((report.rows_read, f"Domaine #{report.rows_read}: {name!r} is not a domain name"))
                continue
            if not dns:
                report.rows_bad += 1
                report.bad_samples.append((report.rows_read, f"Domaine {name}: no DNCertificatOperateur"))
                continue
            if name in domains:
                report.duplicates += 1
            domains[name] = (description[:512], dns)
    except ET.ParseError as exc:
        raise ImportFileError(f"{path.name} is not well-formed XML: {exc}") from None
    if report.rows_read == 0:
        raise ImportFileError(f"{path.name} holds no Domaine element: is this the trust-space whitelist?")
    report.rows_ok = len(domains)
    return domains


async def import_whitelist(conn: AsyncConnection, path: Path) -> ImportReport:
    """Upsert the whitelist's domains and retire those no longer listed (never our own)."""
    path = Path(path)
    report = ImportReport(kind="whitelist", file_name=path.name)
    domains = parse_whitelist(path, report)
    report.retire_skipped = report.rows_bad * 2 > report.rows_read
    now = datetime.now(UTC)
    existing = {row.domain: row for row in (await conn.execute(select(TrustDomain.domain, TrustDomain.is_local, TrustDomain.id))).all()}
    for name, (description, dns) in domains.items():
        values = dict(description=description, operator_dns="\n".join(dns), active=True, updated_at=now)
        if name in existing:
            if existing[name].is_local:
                continue  # our own domains are configured, not imported
            await conn.execute(update(TrustDomain).where(TrustDomain.domain == name).values(**values))
            report.updated += 1
        else:
            await conn.execute(TrustDomain.__table__.insert().values(domain=name, is_local=False, source="whitelist", **values))
            report.inserted += 1
    if not report.retire_skipped:
        stale = [d for d, row in existing.items() if not row.is_local and d not in domains]
        if stale:
            result = await conn.execute(
                update(TrustDomain)
                .where(TrustDomain.domain.in_(stale), TrustDomain.source == "whitelist", TrustDomain.active.is_(True))
                .values(active=False, updated_at=now)
            )
            report.retired = result.rowcount
    return report
