"""The public directory file layouts and how each one is merged into the annuaire tables.

`EXTRACTION_COLUMNS` and `PS_COLUMNS` are the header lines of the files published by the
national directory: `Extraction_Correspondance_MSSante_*.txt` (one line per mailbox) and
`PS_LibreAcces_Personne_activite_*.txt` (one line per activity of a professional).
Columns are read by position; the header is checked for its column count and first name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, Integer, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.identifiers import (
    InvalidIdentifier,
    validate_adeli,
    validate_finess,
    validate_mailbox_address,
    validate_rpps,
    validate_siret,
)
from caducee.annuaire.importing import BadRow, ImportReport, check_header
from caducee.annuaire.merge import upsert_sql
from caducee.annuaire.text import fold

EXTRACTION_COLUMNS = [
    "Type de BAL",
    "Adresse BAL",
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type d'identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code profession",
    "Libellé profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "Complément localisation structure BAL",
    "Complément distribution structure BAL",
    "Numéro Voie structure BAL",
    "Complément numéro de voie structure BAL",
    "Type de voie structure BAL",
    "Libellé Voie structure BAL",
    "Lieu-dit structure BAL",
    "Ligne Acheminement structure BAL",
    "Code postal structure BAL",
    "Département structure BAL",
    "Pays structure BAL",
]

PS_COLUMNS = [
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Code civilité d'exercice",
    "Libellé civilité d'exercice",
    "Code civilité",
    "Libellé civilité",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Code profession",
    "Libellé profession",
    "Code catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code type savoir-faire",
    "Libellé type savoir-faire",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Code mode exercice",
    "Libellé mode exercice",
    "Numéro SIRET site",
    "Numéro SIREN site",
    "Numéro FINESS site",
    "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure",
    "Raison sociale site",
    "Enseigne commerciale site",
    "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)",
    "Code postal (coord. structure)",
    "Code commune (coord. structure)",
    "Libellé commune (coord. structure)",
    "Code pays (coord. structure)",
    "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)",
    "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)",
    "Code Département (structure)",
    "Libellé Département (structure)",
    "Ancien identifiant de la structure",
    "Autorité d'enregistrement",
    "Code secteur d'activité",
    "Libellé secteur d'activité",
    "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
    "Code rôle",
    "Libellé rôle",
    "Code genre activité",
    "Libellé genre activité",
]

MAILBOX_TYPES = {"PER", "ORG", "APP", "CAB"}
OFFICINE_SECTOR = "SA33"  # TRE_R02 secteur d'activité "Pharmacie d'officine"

# TRE_G07 codes and the labels some exports use instead.
_STRUCTURE_ID_TYPES = {
    "1": "FINESS",
    "FINESS": "FINESS",
    "2": "SIREN",
    "SIREN": "SIREN",
    "3": "SIRET",
    "SIRET": "SIRET",
    "4": "RPPS_RANG",
    "5": "ADELI_RANG",
}


def national_person(national_id: str) -> tuple[str, str]:
    """(id type, identifier) from an "Identification nationale PP": 8+RPPS, 0+ADELI, else AUTRE."""
    if not national_id:
        return "", ""
    prefix, rest = national_id[0], national_id[1:]
    if prefix == "8":
        return "RPPS", validate_rpps(rest)
    if prefix == "0":
        return "ADELI", validate_adeli(rest)
    if len(national_id) > 40:
        raise InvalidIdentifier("Identification nationale PP", f"{national_id[:20]}... is too long")
    return "AUTRE", national_id


@lru_cache(maxsize=1 << 16)  # about 25 MB when full: every structure of the national file, which repeat on many lines
def structure_identity(id_type: str, identifier: str) -> tuple[str, str, str]:
    """(key, type, identifier) of a structure; FINESS and SIRET are checked."""
    if not identifier:
        return "", "", ""
    kind = _STRUCTURE_ID_TYPES.get(id_type.strip().upper(), "AUTRE")
    if kind == "FINESS":
        identifier = validate_finess(identifier)
    elif kind == "SIRET":
        identifier = validate_siret(identifier)
    if len(identifier) > 32:
        raise InvalidIdentifier("Identification Structure", f"{identifier[:20]}... is too long")
    return f"{kind}:{identifier}", kind, identifier


def _city_from_routing_line(routing: str, postcode: str) -> str:
    """ "75012 PARIS CEDEX" -> "PARIS CEDEX": the routing line starts with the postcode."""
    routing = routing.strip()
    if postcode and routing.startswith(postcode):
        return routing[len(postcode) :].strip()
    head, _, tail = routing.partition(" ")
    return tail.strip() if head.isdigit() else routing


_NOW = bindparam("now", type_=DateTime(timezone=True))


def _now_params() -> dict[str, Any]:
    return {"now": datetime.now(UTC)}


_RUN = bindparam("run", type_=Integer)


async def _any(conn: AsyncConnection, query: str) -> bool:
    return (await conn.execute(text(query))).first() is not None


# Target column -> expression over the staging row `x`; both files stage these names.
_PROFESSIONAL_COLUMNS = {
    "national_id": "x.national_id",
    "id_type": "x.pp_id_type",
    "identifier": "x.pp_identifier",
    "civility": "x.civility",
    "last_name": "x.last_name",
    "first_name": "x.first_name",
    "profession_code": "x.profession_code",
    "profession_label": "x.profession_label",
    "category_code": "x.category_code",
    "savoir_faire_code": "x.savoir_faire_code",
    "savoir_faire_label": "x.savoir_faire_label",
    "search_name": "x.pp_search",
    "updated_at": ":now",
}
_PROFESSIONAL_UPDATES = [
    "civility",
    "last_name",
    "first_name",
    "profession_code",
    "profession_label",
    "category_code",
    "savoir_faire_code",
    "savoir_faire_label",
    "search_name",
    "updated_at",
]
_STRUCTURE_COLUMNS = {
    "structure_key": "x.structure_key",
    "id_type": "x.structure_id_type",
    "identifier": "x.structure_identifier",
    "name": "x.structure_name",
    "trade_name": "x.trade_name",
    "service": "''",
    "address_line": "x.address_line",
    "postcode": "x.postcode",
    "city": "x.city",
    "city_search": "x.city_search",
    "department": "x.department",
    "country": "x.country",
    "search_name": "x.structure_search",
    "active": "true",
    "updated_at": ":now",
}
_STRUCTURE_UPDATES = [
    "name",
    "trade_name",
    "address_line",
    "postcode",
    "city",
    "city_search",
    "department",
    "country",
    "is_officine",
    "search_name",
    "active",
    "updated_at",
]
_MAILBOX_COLUMNS = {
    "address": "x.address",
    "type": "x.type",
    "domain": "x.domain",
    "professional_national_id": "NULLIF(x.national_id, '')",
    "structure_key": "NULLIF(x.structure_key, '')",
    "service": "x.service",
    "display_name": "x.display_name",
    "liste_rouge": "false",
    "dematerialisation": "x.dematerialisation = 1",
    "source": "'extraction'",
    "search_text": "x.search_text",
    "profession_code": "x.profession_code",
    "postcode": "x.postcode",
    "city_search": "x.city_search",
    "active": "true",
    "retired_at": "NULL",
    "seen_in_run": ":run",
    "updated_at": ":now",
}
_MAILBOX_UPDATES = [
    "type",
    "domain",
    "professional_national_id",
    "structure_key",
    "service",
    "display_name",
    "dematerialisation",
    "search_text",
    "profession_code",
    "postcode",
    "city_search",
    "active",
    "retired_at",
    "seen_in_run",
    "updated_at",
]


# Mailboxes (people) of the public file that the new file no longer lists: an anti-join with the
# staging table (not a mark written on every listed row, which would rewrite them all).
# PostgreSQL plans NOT EXISTS as a hash anti-join; SQLite builds a transient index for NOT IN.
_RETIRE_UNLISTED = {
    "postgresql": "UPDATE mailboxes SET active = false, retired_at = :now, updated_at = :now "
    "WHERE source = 'extraction' AND active = true "
    "AND NOT EXISTS (SELECT 1 FROM {stage} x WHERE x.address = mailboxes.address)",
    "sqlite": "UPDATE mailboxes SET active = false, retired_at = :now, updated_at = :now "
    "WHERE source = 'extraction' AND active = true AND address NOT IN (SELECT address FROM {stage})",
}
_RETIRE_UNLISTED_PEOPLE = {
    "postgresql": "UPDATE professionals SET active = false, updated_at = :now WHERE in_ps_file = true AND active = true "
    "AND NOT EXISTS (SELECT 1 FROM {stage} x WHERE x.national_id = professionals.national_id)",
    "sqlite": "UPDATE professionals SET active = false, updated_at = :now WHERE in_ps_file = true AND active = true "
    "AND national_id NOT IN (SELECT national_id FROM {stage})",
}


class ExtractionFormat:
    """`Extraction_Correspondance_MSSante_*.txt`: one published mailbox per line."""

    kind = "extraction"
    field_count = len(EXTRACTION_COLUMNS)
    staging_table = "stage_extraction"
    staging_columns: Sequence[tuple[str, str]] = [
        ("line_no", "INTEGER"),
        ("address", "TEXT"),
        ("type", "TEXT"),
        ("domain", "TEXT"),
        ("national_id", "TEXT"),
        ("pp_id_type", "TEXT"),
        ("pp_identifier", "TEXT"),
        ("civility", "TEXT"),
        ("last_name", "TEXT"),
        ("first_name", "TEXT"),
        ("category_code", "TEXT"),
        ("profession_code", "TEXT"),
        ("profession_label", "TEXT"),
        ("savoir_faire_code", "TEXT"),
        ("savoir_faire_label", "TEXT"),
        ("structure_key", "TEXT"),
        ("structure_id_type", "TEXT"),
        ("structure_identifier", "TEXT"),
        ("service", "TEXT"),
        ("structure_name", "TEXT"),
        ("trade_name", "TEXT"),
        ("address_line", "TEXT"),
        ("postcode", "TEXT"),
        ("city", "TEXT"),
        ("department", "TEXT"),
        ("country", "TEXT"),
        ("dematerialisation", "INTEGER"),
        ("is_officine", "INTEGER"),
        ("display_name", "TEXT"),
        ("pp_search", "TEXT"),
        ("structure_search", "TEXT"),
        ("search_text", "TEXT"),
        ("city_search", "TEXT"),
    ]

    def check_header(self, fields: list[str]) -> None:
        check_header("Extraction_Correspondance_MSSante", fields, self.field_count, "type de bal")

    def parse(self, line_no: int, f: list[str]) -> tuple[Any, ...]:
        for index in (0, 1, 4, 5, 6, 28):  # the keys; other values are kept as published
            f[index] = f[index].strip()
        mailbox_type = f[0].upper()
        if mailbox_type not in MAILBOX_TYPES:
            raise BadRow(f"unknown mailbox type {f[0]!r} (expected PER, ORG, APP or CAB)")
        address = validate_mailbox_address(f[1])
        pp_type, pp_identifier = national_person(f[4])
        key, structure_type, structure_identifier = structure_identity(f[5], f[6])
        if not pp_identifier and not key:
            raise BadRow("the mailbox has neither a professional nor a structure identifier")
        postcode = f[28]
        city = _city_from_routing_line(f[27], postcode)
        # filter(None, ...) drops the empty parts in C (a generator expression per join was a
        # tenth of the parsing time)
        street = " ".join(filter(None, (f[22], f[23], f[24], f[25])))
        address_line = ", ".join(filter(None, (f[20], street, f[26], f[21])))
        person = " ".join(filter(None, (f[8], f[10], f[9])))
        structure_name = f[18] or f[19]
        display = person or " - ".join(filter(None, (structure_name, f[7]))) or address
        # Fold each part on its own: parts repeat across the file (cities, structures), so
        # the folding cache hits; the joined strings are unique and would only evict.
        last, first, name, trade, service = fold(f[9]), fold(f[10]), fold(f[18]), fold(f[19]), fold(f[7])
        is_officine = structure_type in {"FINESS", "SIRET"} and (name or trade).startswith("pharmacie")
        pp_search = f"{last} {first}".strip()
        structure_search = f"{name} {trade}".strip()
        search_text = " ".join(filter(None, (last, first, name, trade, service)))
        return (
            line_no,
            address,
            mailbox_type,
            address.rpartition("@")[2],
            f[4],
            pp_type,
            pp_identifier,
            f[8],
            f[9],
            f[10],
            f[11],
            f[13],
            f[14],
            f[15],
            f[16],
            key,
            structure_type,
            structure_identifier,
            f[7],
            f[18],
            f[19],
            address_line,
            postcode,
            city,
            f[29],
            f[30],
            1 if f[17].lower() in {"o", "oui", "1", "true"} else 0,
            1 if is_officine else 0,
            display[:256],
            pp_search,
            structure_search,
            search_text[:800],
            fold(city),
        )

    async def merge(self, conn: AsyncConnection, report: ImportReport, run_id: int) -> None:
        t, dialect = self.staging_table, conn.dialect.name
        params = {**_now_params(), "run": run_id}
        report.duplicates = (await conn.execute(text(f"SELECT count(*) - count(DISTINCT address) FROM {t}"))).scalar_one()
        await conn.execute(
            text(
                upsert_sql(
                    dialect,
                    target="professionals",
                    key="national_id",
                    source=t,
                    source_key="x.national_id",
                    columns=_PROFESSIONAL_COLUMNS | {"in_ps_file": "false", "active": "true", "seen_in_run": "0"},
                    update=_PROFESSIONAL_UPDATES,
                    # The PS file is the reference for persons: the extraction only fills gaps.
                    keep_when="professionals.in_ps_file = false",
                    source_filter="x.national_id <> ''",
                    skip_unchanged=True,
                )
            ).bindparams(_NOW),
            params,
        )
        await conn.execute(
            text(
                upsert_sql(
                    dialect,
                    target="structures",
                    key="structure_key",
                    source=t,
                    source_key="x.structure_key",
                    columns=_STRUCTURE_COLUMNS | {"activity_sector": "''", "is_officine": "x.is_officine = 1"},
                    update=[c for c in _STRUCTURE_UPDATES if c != "is_officine"],
                    source_filter="x.structure_key <> ''",
                    skip_unchanged=True,
                )
            ).bindparams(_NOW),
            params,
        )
        before = (await conn.execute(text("SELECT count(*) FROM mailboxes"))).scalar_one()
        listed_before = await _any(conn, "SELECT 1 FROM mailboxes WHERE source = 'extraction' AND active = true LIMIT 1")
        written = await conn.execute(
            text(
                upsert_sql(
                    dialect,
                    target="mailboxes",
                    key="address",
                    source=t,
                    source_key="x.address",
                    columns=_MAILBOX_COLUMNS,
                    update=_MAILBOX_UPDATES,
                    # Our own mailboxes (passwords, patients) are never rewritten by a public file.
                    keep_when="mailboxes.source = 'extraction'",
                    skip_unchanged=True,
                    # SQLite applies every line of a repeated address (the last one wins); only
                    # the last is read, so that each address counts once in the report.
                    source_filter=f"x.line_no IN (SELECT max(line_no) FROM {t} GROUP BY address)"
                    if dialect == "sqlite" and report.duplicates
                    else "true",
                )
            ).bindparams(_NOW, _RUN),
            params,
        )
        report.inserted = (await conn.execute(text("SELECT count(*) FROM mailboxes"))).scalar_one() - before
        report.updated = written.rowcount - report.inserted
        report.unchanged = report.rows_ok - report.duplicates - report.inserted - report.updated
        if listed_before and not report.retire_skipped:  # a first import has nothing to retire
            retired = await conn.execute(text(_RETIRE_UNLISTED[dialect].format(stage=t)).bindparams(_NOW), params)
            report.retired = retired.rowcount


class PersonActivityFormat:
    """`PS_LibreAcces_Personne_activite_*.txt`: one activity of a professional per line.

    A person has as many lines as activities; the professional is the same on each, the
    structure (site) differs. Pharmacies are the sites whose sector is SA33.
    """

    kind = "ps"
    field_count = len(PS_COLUMNS)
    staging_table = "stage_ps"
    staging_columns: Sequence[tuple[str, str]] = [
        ("line_no", "INTEGER"),
        ("national_id", "TEXT"),
        ("pp_id_type", "TEXT"),
        ("pp_identifier", "TEXT"),
        ("civility", "TEXT"),
        ("last_name", "TEXT"),
        ("first_name", "TEXT"),
        ("profession_code", "TEXT"),
        ("profession_label", "TEXT"),
        ("category_code", "TEXT"),
        ("savoir_faire_code", "TEXT"),
        ("savoir_faire_label", "TEXT"),
        ("pp_search", "TEXT"),
        ("structure_key", "TEXT"),
        ("structure_id_type", "TEXT"),
        ("structure_identifier", "TEXT"),
        ("structure_name", "TEXT"),
        ("trade_name", "TEXT"),
        ("address_line", "TEXT"),
        ("postcode", "TEXT"),
        ("city", "TEXT"),
        ("city_search", "TEXT"),
        ("department", "TEXT"),
        ("country", "TEXT"),
        ("sector", "TEXT"),
        ("is_officine", "INTEGER"),
        ("structure_search", "TEXT"),
    ]

    def check_header(self, fields: list[str]) -> None:
        check_header("PS_LibreAcces_Personne_activite", fields, self.field_count, "type d")

    def parse(self, line_no: int, f: list[str]) -> tuple[Any, ...]:
        for index in (2, 19, 21, 35, 48):  # the keys; other values are kept as published
            f[index] = f[index].strip()
        if not f[2]:
            raise BadRow("the Identification nationale PP column is empty")
        pp_type, pp_identifier = national_person(f[2])
        if f[21]:
            key, s_type, s_id = structure_identity("FINESS", f[21])
        elif f[19]:
            key, s_type, s_id = structure_identity("SIRET", f[19])
        else:
            key, s_type, s_id = "", "", ""
        street = " ".join(filter(None, (f[28], f[29], f[31], f[32])))
        address_line = ", ".join(filter(None, (f[26], f[27], street, f[33])))
        city = f[37] or _city_from_routing_line(f[34], f[35])
        sector = f[48]
        name = f[24] or f[25]
        last, first = fold(f[7]), fold(f[8])
        structure_search = f"{fold(f[24])} {fold(f[25])}".strip()
        return (
            line_no,
            f[2],
            pp_type,
            pp_identifier,
            f[4] or f[6],
            f[7],
            f[8],
            f[9],
            f[10],
            f[11],
            f[15],
            f[16],
            f"{last} {first}".strip(),
            key,
            s_type,
            s_id,
            name,
            f[25],
            address_line,
            f[35],
            city,
            fold(city),
            f[44],
            f[39],
            sector,
            1 if sector == OFFICINE_SECTOR else 0,
            structure_search,
        )

    async def merge(self, conn: AsyncConnection, report: ImportReport, run_id: int) -> None:
        t, dialect = self.staging_table, conn.dialect.name
        params = {**_now_params(), "run": run_id}
        before = (await conn.execute(text("SELECT count(*) FROM professionals"))).scalar_one()
        listed_before = await _any(conn, "SELECT 1 FROM professionals WHERE in_ps_file = true AND active = true LIMIT 1")
        distinct = (await conn.execute(text(f"SELECT count(DISTINCT national_id) FROM {t}"))).scalar_one()
        written = await conn.execute(
            text(
                upsert_sql(
                    dialect,
                    target="professionals",
                    key="national_id",
                    source=t,
                    source_key="x.national_id",
                    columns=_PROFESSIONAL_COLUMNS | {"in_ps_file": "true", "active": "true", "seen_in_run": ":run"},
                    update=[*_PROFESSIONAL_UPDATES, "in_ps_file", "active", "seen_in_run"],
                    skip_unchanged=True,
                    # A person has one line per activity: on SQLite only the last is read, so
                    # that each person is written (and counted) once, as DISTINCT ON does.
                    source_filter=f"x.line_no IN (SELECT max(line_no) FROM {t} GROUP BY national_id)" if dialect == "sqlite" else "true",
                )
            ).bindparams(_NOW, _RUN),
            params,
        )
        await conn.execute(
            text(
                upsert_sql(
                    dialect,
                    target="structures",
                    key="structure_key",
                    source=t,
                    source_key="x.structure_key",
                    columns=_STRUCTURE_COLUMNS | {"activity_sector": "x.sector", "is_officine": "x.is_officine = 1"},
                    update=[*_STRUCTURE_UPDATES, "activity_sector"],
                    source_filter="x.structure_key <> ''",
                    skip_unchanged=True,
                )
            ).bindparams(_NOW),
            params,
        )
        report.inserted = (await conn.execute(text("SELECT count(*) FROM professionals"))).scalar_one() - before
        report.updated = written.rowcount - report.inserted
        report.unchanged = distinct - report.inserted - report.updated
        if listed_before and not report.retire_skipped:  # a first import has nothing to retire
            retired = await conn.execute(text(_RETIRE_UNLISTED_PEOPLE[dialect].format(stage=t)).bindparams(_NOW), params)
            report.retired = retired.rowcount
