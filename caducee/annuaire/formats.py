"""The public directory file layouts and how each one is merged into the annuaire tables.

`EXTRACTION_COLUMNS` and `PS_COLUMNS` are the header lines of the files published by the
national directory: `Extraction_Correspondance_MSSante_*.txt` (one line per mailbox) and
`PS_LibreAcces_Personne_activite_*.txt` (one line per activity of a professional).
Columns are read by position; the header is checked for its column count and first name.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, bindparam, text
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
from caducee.annuaire.text import fold

EXTRACTION_COLUMNS = [
    "Type de BAL", "Adresse BAL", "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type d'identifiant structure", "Identification Structure", "Service de rattachement",
    "Civilité d'exercice", "Nom d'exercice", "Prénom d'exercice", "Catégorie professionnelle",
    "Libellé catégorie professionnelle", "Code profession", "Libellé profession", "Code savoir-faire",
    "Libellé savoir-faire", "Dématérialisation", "Raison sociale structure BAL",
    "Enseigne commerciale structure BAL", "Complément localisation structure BAL",
    "Complément distribution structure BAL", "Numéro Voie structure BAL",
    "Complément numéro de voie structure BAL", "Type de voie structure BAL", "Libellé Voie structure BAL",
    "Lieu-dit structure BAL", "Ligne Acheminement structure BAL", "Code postal structure BAL",
    "Département structure BAL", "Pays structure BAL",
]  # fmt: skip

PS_COLUMNS = [
    "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Code civilité d'exercice",
    "Libellé civilité d'exercice", "Code civilité", "Libellé civilité", "Nom d'exercice", "Prénom d'exercice",
    "Code profession", "Libellé profession", "Code catégorie professionnelle",
    "Libellé catégorie professionnelle", "Code type savoir-faire", "Libellé type savoir-faire",
    "Code savoir-faire", "Libellé savoir-faire", "Code mode exercice", "Libellé mode exercice",
    "Numéro SIRET site", "Numéro SIREN site", "Numéro FINESS site", "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure", "Raison sociale site", "Enseigne commerciale site",
    "Complément destinataire (coord. structure)", "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)", "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)", "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)", "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)", "Code postal (coord. structure)", "Code commune (coord. structure)",
    "Libellé commune (coord. structure)", "Code pays (coord. structure)", "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)", "Téléphone 2 (coord. structure)", "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)", "Code Département (structure)", "Libellé Département (structure)",
    "Ancien identifiant de la structure", "Autorité d'enregistrement", "Code secteur d'activité",
    "Libellé secteur d'activité", "Code section tableau pharmaciens", "Libellé section tableau pharmaciens",
    "Code rôle", "Libellé rôle", "Code genre activité", "Libellé genre activité",
]  # fmt: skip

MAILBOX_TYPES = {"PER", "ORG", "APP", "CAB"}
OFFICINE_SECTOR = "SA33"  # TRE_R02 secteur d'activité "Pharmacie d'officine"

# TRE_G07 codes and the labels some exports use instead.
_STRUCTURE_ID_TYPES = {
    "1": "FINESS", "FINESS": "FINESS", "2": "SIREN", "SIREN": "SIREN", "3": "SIRET", "SIRET": "SIRET",
    "4": "RPPS_RANG", "5": "ADELI_RANG",
}  # fmt: skip


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
    """"75012 PARIS CEDEX" -> "PARIS CEDEX": the routing line starts with the postcode."""
    routing = routing.strip()
    if postcode and routing.startswith(postcode):
        return routing[len(postcode):].strip()
    head, _, tail = routing.partition(" ")
    return tail.strip() if head.isdigit() else routing


_NOW = bindparam("now", type_=DateTime(timezone=True))


def _now_params() -> dict[str, Any]:
    return {"now": datetime.now(timezone.utc)}


class ExtractionFormat:
    """`Extraction_Correspondance_MSSante_*.txt`: one published mailbox per line."""

    kind = "extraction"
    field_count = len(EXTRACTION_COLUMNS)
    staging_table = "stage_extraction"
    staging_columns = [
        ("line_no", "INTEGER"), ("address", "TEXT"), ("type", "TEXT"), ("domain", "TEXT"),
        ("national_id", "TEXT"), ("pp_id_type", "TEXT"), ("pp_identifier", "TEXT"), ("civility", "TEXT"),
        ("last_name", "TEXT"), ("first_name", "TEXT"), ("category_code", "TEXT"), ("profession_code", "TEXT"),
        ("profession_label", "TEXT"), ("savoir_faire_code", "TEXT"), ("savoir_faire_label", "TEXT"),
        ("structure_key", "TEXT"), ("structure_id_type", "TEXT"), ("structure_identifier", "TEXT"),
        ("service", "TEXT"), ("structure_name", "TEXT"), ("trade_name", "TEXT"), ("address_line", "TEXT"),
        ("postcode", "TEXT"), ("city", "TEXT"), ("department", "TEXT"), ("country", "TEXT"),
        ("dematerialisation", "INTEGER"), ("is_officine", "INTEGER"), ("display_name", "TEXT"),
        ("pp_search", "TEXT"), ("structure_search", "TEXT"), ("search_text", "TEXT"), ("city_search", "TEXT"),
    ]  # fmt: skip

    def check_header(self, fields: list[str]) -> None:
        check_header("Extraction_Correspondance_MSSante", fields, self.field_count, "type de bal")

    def parse(self, line_no: int, f: list[str]) -> tuple[Any, ...]:
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
        street = " ".join(part for part in (f[22], f[23], f[24], f[25]) if part)
        address_line = ", ".join(part for part in (f[20], street, f[26], f[21]) if part)
        person = " ".join(part for part in (f[8], f[10], f[9]) if part)
        structure_name = f[18] or f[19]
        display = person or " - ".join(part for part in (structure_name, f[7]) if part) or address
        is_officine = structure_type in {"FINESS", "SIRET"} and fold(structure_name).startswith("pharmacie")
        pp_search = fold(f"{f[9]} {f[10]}")
        structure_search = fold(f"{structure_name} {f[19] if f[18] else ''}")
        search_text = fold(" ".join((f[9], f[10], structure_name, f[19], f[7])))
        return (
            line_no, address, mailbox_type, address.rpartition("@")[2], f[4], pp_type, pp_identifier, f[8],
            f[9], f[10], f[11], f[13], f[14], f[15], f[16], key, structure_type, structure_identifier, f[7],
            f[18], f[19], address_line, postcode, city, f[29], f[30], 1 if f[17].lower() in {"o", "oui", "1", "true"} else 0,
            1 if is_officine else 0, display[:256], pp_search, structure_search, search_text[:800], fold(city),
        )  # fmt: skip

    async def merge(self, conn: AsyncConnection, report: ImportReport) -> None:
        t = self.staging_table
        await conn.execute(text(f"CREATE INDEX ix_{t}_address ON {t} (address, line_no)"))
        report.duplicates = (
            await conn.execute(text(f"SELECT count(*) - count(DISTINCT address) FROM {t}"))
        ).scalar_one()
        # With duplicates, the last line of an address wins.
        latest = (
            f"(SELECT * FROM {t} s WHERE NOT EXISTS "
            f"(SELECT 1 FROM {t} later WHERE later.address = s.address AND later.line_no > s.line_no))"
            if report.duplicates
            else t
        )
        params = _now_params()
        await conn.execute(
            text(
                "INSERT INTO professionals (national_id, id_type, identifier, civility, last_name, first_name, "
                "profession_code, profession_label, category_code, savoir_faire_code, savoir_faire_label, "
                "search_name, in_ps_file, active, updated_at) "
                "SELECT national_id, max(pp_id_type), max(pp_identifier), max(civility), max(last_name), "
                "max(first_name), max(profession_code), max(profession_label), max(category_code), "
                "max(savoir_faire_code), max(savoir_faire_label), max(pp_search), false, true, :now "
                f"FROM {latest} x WHERE national_id <> '' GROUP BY national_id "
                "ON CONFLICT (national_id) DO UPDATE SET civility = excluded.civility, "
                "last_name = excluded.last_name, first_name = excluded.first_name, "
                "profession_code = excluded.profession_code, profession_label = excluded.profession_label, "
                "category_code = excluded.category_code, savoir_faire_code = excluded.savoir_faire_code, "
                "savoir_faire_label = excluded.savoir_faire_label, search_name = excluded.search_name, "
                "updated_at = excluded.updated_at "
                # The PS file is the reference for persons: the extraction only fills gaps.
                "WHERE professionals.in_ps_file = false"
            ).bindparams(_NOW),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO structures (structure_key, id_type, identifier, name, trade_name, service, "
                "address_line, postcode, city, city_search, department, country, activity_sector, is_officine, "
                "search_name, active, updated_at) "
                "SELECT structure_key, max(structure_id_type), max(structure_identifier), max(structure_name), "
                "max(trade_name), '', max(address_line), max(postcode), max(city), max(city_search), "
                "max(department), max(country), '', max(is_officine) = 1, max(structure_search), true, :now "
                f"FROM {latest} x WHERE structure_key <> '' GROUP BY structure_key "
                "ON CONFLICT (structure_key) DO UPDATE SET name = excluded.name, trade_name = excluded.trade_name, "
                "address_line = excluded.address_line, postcode = excluded.postcode, city = excluded.city, "
                "city_search = excluded.city_search, department = excluded.department, country = excluded.country, "
                "is_officine = (structures.is_officine OR excluded.is_officine), "
                "search_name = excluded.search_name, active = true, updated_at = excluded.updated_at"
            ).bindparams(_NOW),
            params,
        )
        existing = (
            await conn.execute(text(f"SELECT count(*) FROM {latest} x JOIN mailboxes m ON m.address = x.address"))
        ).scalar_one()
        result = await conn.execute(
            text(
                "INSERT INTO mailboxes (address, type, domain, professional_id, structure_id, patient_id, service, "
                "display_name, liste_rouge, dematerialisation, source, password_hash, search_text, profession_code, "
                "postcode, city_search, active, retired_at, updated_at) "
                "SELECT x.address, x.type, x.domain, p.id, st.id, NULL, x.service, x.display_name, false, "
                "x.dematerialisation = 1, 'extraction', NULL, x.search_text, x.profession_code, x.postcode, "
                "x.city_search, true, NULL, :now "
                f"FROM {latest} x "
                "LEFT JOIN professionals p ON x.national_id <> '' AND p.national_id = x.national_id "
                "LEFT JOIN structures st ON x.structure_key <> '' AND st.structure_key = x.structure_key "
                "WHERE true "
                "ON CONFLICT (address) DO UPDATE SET type = excluded.type, domain = excluded.domain, "
                "professional_id = excluded.professional_id, structure_id = excluded.structure_id, "
                "service = excluded.service, display_name = excluded.display_name, "
                "dematerialisation = excluded.dematerialisation, search_text = excluded.search_text, "
                "profession_code = excluded.profession_code, postcode = excluded.postcode, "
                "city_search = excluded.city_search, active = true, retired_at = NULL, "
                "updated_at = excluded.updated_at "
                # Our own mailboxes (passwords, patients) are never rewritten by a public file.
                "WHERE mailboxes.source = 'extraction'"
            ).bindparams(_NOW),
            params,
        )
        report.updated = existing
        report.inserted = max(result.rowcount - existing, 0) if result.rowcount >= 0 else 0
        if not report.retire_skipped:
            retired = await conn.execute(
                text(
                    "UPDATE mailboxes SET active = false, retired_at = :now, updated_at = :now "
                    "WHERE source = 'extraction' AND active = true AND NOT EXISTS "
                    f"(SELECT 1 FROM {t} x WHERE x.address = mailboxes.address)"
                ).bindparams(_NOW),
                params,
            )
            report.retired = retired.rowcount


class PersonActivityFormat:
    """`PS_LibreAcces_Personne_activite_*.txt`: one activity of a professional per line.

    A person has as many lines as activities; the professional is the same on each, the
    structure (site) differs. Pharmacies are the sites whose sector is SA33.
    """

    kind = "ps"
    field_count = len(PS_COLUMNS)
    staging_table = "stage_ps"
    staging_columns = [
        ("line_no", "INTEGER"), ("national_id", "TEXT"), ("pp_id_type", "TEXT"), ("pp_identifier", "TEXT"),
        ("civility", "TEXT"), ("last_name", "TEXT"), ("first_name", "TEXT"), ("profession_code", "TEXT"),
        ("profession_label", "TEXT"), ("category_code", "TEXT"), ("savoir_faire_code", "TEXT"),
        ("savoir_faire_label", "TEXT"), ("pp_search", "TEXT"), ("structure_key", "TEXT"),
        ("structure_id_type", "TEXT"), ("structure_identifier", "TEXT"), ("structure_name", "TEXT"),
        ("trade_name", "TEXT"), ("address_line", "TEXT"), ("postcode", "TEXT"), ("city", "TEXT"),
        ("city_search", "TEXT"), ("department", "TEXT"), ("country", "TEXT"), ("sector", "TEXT"),
        ("is_officine", "INTEGER"), ("structure_search", "TEXT"),
    ]  # fmt: skip

    def check_header(self, fields: list[str]) -> None:
        check_header("PS_LibreAcces_Personne_activite", fields, self.field_count, "type d")

    def parse(self, line_no: int, f: list[str]) -> tuple[Any, ...]:
        if not f[2]:
            raise BadRow("the Identification nationale PP column is empty")
        pp_type, pp_identifier = national_person(f[2])
        if f[21]:
            key, s_type, s_id = structure_identity("FINESS", f[21])
        elif f[19]:
            key, s_type, s_id = structure_identity("SIRET", f[19])
        else:
            key, s_type, s_id = "", "", ""
        street = " ".join(part for part in (f[28], f[29], f[31], f[32]) if part)
        address_line = ", ".join(part for part in (f[26], f[27], street, f[33]) if part)
        city = f[37] or _city_from_routing_line(f[34], f[35])
        sector = f[48]
        name = f[24] or f[25]
        return (
            line_no, f[2], pp_type, pp_identifier, f[4] or f[6], f[7], f[8], f[9], f[10], f[11], f[15], f[16],
            fold(f"{f[7]} {f[8]}"), key, s_type, s_id, name, f[25], address_line, f[35], city, fold(city),
            f[44], f[39], sector, 1 if sector == OFFICINE_SECTOR else 0, fold(f"{name} {f[25] if f[24] else ''}"),
        )  # fmt: skip

    async def merge(self, conn: AsyncConnection, report: ImportReport) -> None:
        t = self.staging_table
        params = _now_params()
        await conn.execute(text(f"CREATE INDEX ix_{t}_national_id ON {t} (national_id)"))
        existing = (
            await conn.execute(
                text(f"SELECT count(*) FROM (SELECT DISTINCT national_id FROM {t}) x "
                     "JOIN professionals p ON p.national_id = x.national_id")
            )
        ).scalar_one()  # fmt: skip
        distinct = (await conn.execute(text(f"SELECT count(DISTINCT national_id) FROM {t}"))).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO professionals (national_id, id_type, identifier, civility, last_name, first_name, "
                "profession_code, profession_label, category_code, savoir_faire_code, savoir_faire_label, "
                "search_name, in_ps_file, active, updated_at) "
                "SELECT national_id, max(pp_id_type), max(pp_identifier), max(civility), max(last_name), "
                "max(first_name), max(profession_code), max(profession_label), max(category_code), "
                "max(savoir_faire_code), max(savoir_faire_label), max(pp_search), true, true, :now "
                f"FROM {t} WHERE true GROUP BY national_id "
                "ON CONFLICT (national_id) DO UPDATE SET civility = excluded.civility, "
                "last_name = excluded.last_name, first_name = excluded.first_name, "
                "profession_code = excluded.profession_code, profession_label = excluded.profession_label, "
                "category_code = excluded.category_code, savoir_faire_code = excluded.savoir_faire_code, "
                "savoir_faire_label = excluded.savoir_faire_label, search_name = excluded.search_name, "
                "in_ps_file = true, active = true, updated_at = excluded.updated_at"
            ).bindparams(_NOW),
            params,
        )
        await conn.execute(
            text(
                "INSERT INTO structures (structure_key, id_type, identifier, name, trade_name, service, "
                "address_line, postcode, city, city_search, department, country, activity_sector, is_officine, "
                "search_name, active, updated_at) "
                "SELECT structure_key, max(structure_id_type), max(structure_identifier), max(structure_name), "
                "max(trade_name), '', max(address_line), max(postcode), max(city), max(city_search), "
                "max(department), max(country), max(sector), max(is_officine) = 1, max(structure_search), true, :now "
                f"FROM {t} WHERE structure_key <> '' GROUP BY structure_key "
                "ON CONFLICT (structure_key) DO UPDATE SET name = excluded.name, trade_name = excluded.trade_name, "
                "address_line = excluded.address_line, postcode = excluded.postcode, city = excluded.city, "
                "city_search = excluded.city_search, department = excluded.department, country = excluded.country, "
                "activity_sector = excluded.activity_sector, is_officine = excluded.is_officine, "
                "search_name = excluded.search_name, active = true, updated_at = excluded.updated_at"
            ).bindparams(_NOW),
            params,
        )
        report.updated = existing
        report.inserted = distinct - existing
        if not report.retire_skipped:
            retired = await conn.execute(
                text(
                    "UPDATE professionals SET active = false, updated_at = :now "
                    "WHERE in_ps_file = true AND active = true AND NOT EXISTS "
                    f"(SELECT 1 FROM {t} x WHERE x.national_id = professionals.national_id)"
                ).bindparams(_NOW),
                params,
            )
            report.retired = retired.rowcount
