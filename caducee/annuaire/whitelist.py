"""Import of the trust-space whitelist (liste blanche): the domains we may exchange mail with.

The published XML holds `Domaine` elements, each with `Nom`, `Description` and one or more
`DNCertificatOperateur`. Element names are matched without their namespace, so a change of
namespace in a new edition does not silently empty the trust space.

The file comes from outside: it is read with defusedxml's SAX parser (no DTD, no entity, no
external reference), which also says on which line each `Domaine` starts, so a refused entry
is reported where an operator will find it in the file. A re-import of the same file changes
nothing and says so (0 changed): a domain is rewritten only when what the file says differs.
"""

from __future__ import annotations

import re
import xml.sax
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from xml.sax.handler import ContentHandler
from xml.sax.xmlreader import Locator

import defusedxml.sax
from defusedxml import DefusedXmlException
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.importing import BAD_ROW_SAMPLES, ImportFileError, ImportReport
from caducee.annuaire.models import TrustDomain

_DOMAIN_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")
DESCRIPTION_LENGTH = 512  # the column's size


def _local(name: str) -> str:
    """`lb:Domaine` or `Domaine` -> `Domaine` (SAX without namespace processing gives the qualified name)."""
    return name.rpartition(":")[2]


class _Domains(ContentHandler):
    """Collects each `Domaine` (name, description, DNs) with the line it starts on."""

    def __init__(self, report: ImportReport, report_stream: TextIO | None) -> None:
        super().__init__()
        self.report = report
        self.report_stream = report_stream  # every refused entry, where the summary keeps the first ones
        self.domains: dict[str, tuple[str, list[str]]] = {}
        self._line = 0  # the line of the `Domaine` being read, 0 outside one
        self._depth = 0  # elements open inside it
        self._field = ""  # the child whose text is being read
        self._text: list[str] = []
        self._name, self._description = "", ""
        self._dns: list[str] = []
        self._where: Locator | None = None  # where the parser is (SAX hands it over before the first event)

    def setDocumentLocator(self, locator: Locator) -> None:  # noqa: N802 (SAX's names)
        self._where = locator

    def startElement(self, name: str, attrs: object) -> None:  # noqa: N802 (SAX's names)
        tag = _local(name)
        if self._line == 0:
            if tag == "Domaine":
                self._line = max((self._where.getLineNumber() if self._where is not None else None) or 1, 1)
                self._depth, self._name, self._description, self._dns = 0, "", "", []
            return
        self._depth += 1
        if self._depth == 1:
            self._field, self._text = tag, []

    def characters(self, content: str) -> None:
        if self._line and self._depth == 1:
            self._text.append(content)

    def endElement(self, name: str) -> None:  # noqa: N802
        if self._line == 0:
            return
        if self._depth == 0:  # the `Domaine` itself closes
            self._finish()
            self._line = 0
            return
        if self._depth == 1:
            value = "".join(self._text).strip()
            if self._field == "Nom":
                self._name = value.lower().rstrip(".")
            elif self._field == "Description":
                self._description = value
            elif self._field == "DNCertificatOperateur" and value:
                self._dns.append(value)
            self._field = ""
        self._depth -= 1

    def _bad(self, message: str) -> None:
        self.report.rows_bad += 1
        if len(self.report.bad_samples) < BAD_ROW_SAMPLES:
            self.report.bad_samples.append((self._line, message))
        if self.report_stream is not None:
            self.report_stream.write(f"{self._line}\t{message}\n")

    def _finish(self) -> None:
        self.report.rows_read += 1
        name = self._name
        if not _DOMAIN_NAME.match(name):
            self._bad(f"Domaine {name!r} is not a domain name" if name else "Domaine without a Nom")
            return
        if not self._dns:
            self._bad(f"Domaine {name}: no DNCertificatOperateur (the operator certificate its mail must come with)")
            return
        if name in self.domains:
            self.report.duplicates += 1
        self.domains[name] = (self._description[:DESCRIPTION_LENGTH], self._dns)


def parse_whitelist(path: Path, report: ImportReport, report_stream: TextIO | None = None) -> dict[str, tuple[str, list[str]]]:
    """{domain: (description, operator DNs)} from the XML; bad entries go to the report (and
    `report_stream`) with the line their `Domaine` starts on."""
    handler = _Domains(report, report_stream)
    try:
        with open(path, "rb") as handle:
            defusedxml.sax.parse(handle, handler)
    except xml.sax.SAXParseException as exc:
        raise ImportFileError(f"{path.name} is not well-formed XML: line {exc.getLineNumber()}: {exc.getMessage()}") from None
    except DefusedXmlException as exc:
        raise ImportFileError(f"{path.name} declares a DTD or entities, which the whitelist never does: refused ({exc})") from None
    if report.rows_read == 0:
        raise ImportFileError(f"{path.name} holds no Domaine element: is this the trust-space whitelist?")
    report.rows_ok = len(handler.domains)
    return handler.domains


async def import_whitelist(conn: AsyncConnection, path: Path, *, report_stream: TextIO | None = None) -> ImportReport:
    """Upsert the whitelist's domains and retire those no longer listed (never our own)."""
    path = Path(path)
    report = ImportReport(kind="whitelist", file_name=path.name)
    domains = parse_whitelist(path, report, report_stream)
    report.retire_skipped = report.rows_bad * 2 > report.rows_read
    now = datetime.now(UTC)
    columns = (TrustDomain.domain, TrustDomain.is_local, TrustDomain.description, TrustDomain.operator_dns, TrustDomain.active)
    existing = {row.domain: row for row in (await conn.execute(select(*columns))).all()}
    for name, (description, dns) in domains.items():
        values = dict(description=description, operator_dns="\n".join(dns), active=True)
        known = existing.get(name)
        if known is None:
            await conn.execute(insert(TrustDomain).values(domain=name, is_local=False, source="whitelist", updated_at=now, **values))
            report.inserted += 1
        elif known.is_local:
            continue  # our own domains are configured, not imported
        elif (known.description, known.operator_dns, bool(known.active)) == (description, values["operator_dns"], True):
            report.unchanged += 1
        else:
            await conn.execute(update(TrustDomain).where(TrustDomain.domain == name).values(updated_at=now, **values))
            report.updated += 1
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
