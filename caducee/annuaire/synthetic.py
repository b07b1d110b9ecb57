"""Files in the real public layouts, made up: for the tests and the import benchmark.

The real files cannot be shipped (size, and they change every day); these have the same
header, column count, separators and encoding, with valid identifiers unless asked not to.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from caducee.annuaire.formats import EXTRACTION_COLUMNS, PS_COLUMNS
from caducee.annuaire.identifiers import luhn_valid
from caducee.annuaire.text import fold

LAST_NAMES = [
    "MARTIN",
    "BERNARD",
    "THOMAS",
    "PETIT",
    "ROBERT",
    "RICHARD",
    "DURAND",
    "DUBOIS",
    "MOREAU",
    "LAURENT",
    "SIMON",
    "MICHEL",
    "LEFÈVRE",
    "LEROY",
    "ROUX",
    "DAVID",
    "BERTRAND",
    "MOREL",
    "FOURNIER",
    "GIRARD",
]
FIRST_NAMES = [
    "Sophie",
    "Jean",
    "Marie",
    "Pierre",
    "Nathalie",
    "Michel",
    "Isabelle",
    "André",
    "Céline",
    "Hélène",
    "Karim",
    "Fatima",
    "Louis",
    "Chloé",
    "Hugo",
    "Inès",
    "Paul",
    "Léa",
    "Éric",
    "Zoé",
]
CITIES = [
    ("75012", "PARIS"),
    ("69003", "LYON"),
    ("13005", "MARSEILLE"),
    ("31000", "TOULOUSE"),
    ("33000", "BORDEAUX"),
    ("59000", "LILLE"),
    ("67000", "STRASBOURG"),
    ("44000", "NANTES"),
    ("20000", "AJACCIO"),
    ("97400", "SAINT-DENIS"),
]
PROFESSIONS = [
    ("10", "Médecin"),
    ("21", "Pharmacien"),
    ("40", "Chirurgien-Dentiste"),
    ("50", "Sage-Femme"),
    ("60", "Infirmier"),
    ("70", "Masseur-Kinésithérapeute"),
    ("91", "Orthophoniste"),
]


def with_luhn(prefix: str) -> str:
    """`prefix` followed by the digit that makes the Luhn check hold."""
    for digit in "0123456789":
        if luhn_valid(prefix + digit):
            return prefix + digit
    raise AssertionError("unreachable")


# The made-up numbers live in ranges of their own, away from the demo world's (RPPS
# 1000000000x, FINESS 75000001x: caducee/demo.py): a generated file imported into a demo
# database must not rename Dr Bernard or move the Pharmacie du Canal.
RPPS_BASE = 900_000_000  # RPPS 19xxxxxxxxx: 100 million numbers
FINESS_BASE = 500_000  # FINESS 755xxxxxx and above: 500,000 numbers


def rpps(n: int) -> str:
    """The RPPS number of made-up professional `n` (0 <= n < 100,000,000), Luhn key included."""
    if not 0 <= n < 1_000_000_000 - RPPS_BASE:
        raise ValueError(f"synthetic RPPS numbers go from 0 to {1_000_000_000 - RPPS_BASE - 1}, not {n}")
    return with_luhn(f"1{RPPS_BASE + n:09d}")


def finess(n: int) -> str:
    """The FINESS number of made-up structure `n` (0 <= n < 500,000), Luhn key included."""
    if not 0 <= n < 1_000_000 - FINESS_BASE:
        raise ValueError(f"synthetic FINESS numbers go from 0 to {1_000_000 - FINESS_BASE - 1}, not {n}")
    return with_luhn(f"75{FINESS_BASE + n:06d}")


def extraction_row(
    n: int,
    *,
    mailbox_type: str = "PER",
    address: str | None = None,
    profession: tuple[str, str] | None = None,
    city: tuple[str, str] | None = None,
    structure_name: str | None = None,
    national_id: str | None = None,
    structure_id: str | None = None,
    last_name: str | None = None,
    first_name: str | None = None,
) -> list[str]:
    """One line of an extraction (31 values) for mailbox number `n`."""
    last = last_name or LAST_NAMES[n % len(LAST_NAMES)]
    first = first_name or FIRST_NAMES[(n // 7) % len(FIRST_NAMES)]
    code, label = profession or PROFESSIONS[n % len(PROFESSIONS)]
    postcode, town = city or CITIES[(n // 3) % len(CITIES)]
    row = [""] * len(EXTRACTION_COLUMNS)
    row[0] = mailbox_type
    if mailbox_type == "PER":
        row[1] = address or f"{fold(first)}.{fold(last)}.{n}@medecin.mssante.fr".replace(" ", "-")
        row[2], row[3] = "8", rpps(n)
        row[4] = national_id if national_id is not None else "8" + row[3]
        row[8], row[9], row[10] = ("Dr" if code == "10" else "M."), last, first
        row[11], row[12], row[13], row[14] = "C", "Civil", code, label
    else:
        row[1] = address or f"secretariat.{n}@hopital.mssante.fr"
        row[7] = "Secrétariat"
    row[5] = "1"
    row[6] = structure_id if structure_id is not None else finess(n % 50_000)
    row[17] = "O"
    row[18] = structure_name or f"CENTRE DE SANTÉ {n % 50_000}"
    row[22], row[24], row[25] = str(n % 90 + 1), "R", "DE LA RÉPUBLIQUE"
    row[27], row[28], row[29], row[30] = f"{postcode} {town}", postcode, postcode[:2], "France"
    return row


def ps_row(
    n: int,
    *,
    national_id: str | None = None,
    sector: str = "SA01",
    site_finess: str | None = None,
    site_name: str | None = None,
    profession: tuple[str, str] | None = None,
    city: tuple[str, str] | None = None,
) -> list[str]:
    """One line of a PS_LibreAcces_Personne_activite file (56 values)."""
    code, label = profession or PROFESSIONS[n % len(PROFESSIONS)]
    postcode, town = city or CITIES[(n // 3) % len(CITIES)]
    row = [""] * len(PS_COLUMNS)
    number = rpps(n)
    row[0], row[1], row[2] = "8", number, national_id if national_id is not None else "8" + number
    row[3], row[4] = "DR" if code == "10" else "", "Docteur" if code == "10" else ""
    row[7], row[8] = LAST_NAMES[n % len(LAST_NAMES)], FIRST_NAMES[(n // 7) % len(FIRST_NAMES)]
    row[9], row[10], row[11], row[12] = code, label, "C", "Civil"
    row[17], row[18] = "L", "Libéral"
    row[21] = site_finess if site_finess is not None else finess(n % 50_000)
    row[24] = site_name or f"CABINET {n % 50_000}"
    row[28], row[31], row[32] = str(n % 90 + 1), "Rue", "DU MARCHÉ"
    row[35], row[37], row[38], row[39] = postcode, town, "99000", "France"
    row[44], row[48], row[49] = postcode[:2], sector, "Pharmacie d'officine" if sector == "SA33" else "Cabinet"
    return row


def write_file(path: Path, header: Sequence[str], rows: Iterable[Sequence[str] | str], *, trailing_pipe: bool = False) -> Path:
    """Write a `|` file: header line then rows (a str row is written as is, for broken lines)."""
    end = "|\n" if trailing_pipe else "\n"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("|".join(header) + end)
        for row in rows:
            handle.write(row if isinstance(row, str) else "|".join(row) + end)
    return path


def generate_extraction(path: Path, count: int, seed: int = 1) -> Path:
    """A full-size extraction: mostly PER mailboxes, some ORG, as the real one."""
    rng = random.Random(seed)

    def rows() -> Iterable[list[str]]:
        for n in range(count):
            yield extraction_row(n, mailbox_type="ORG" if rng.random() < 0.08 else "PER")

    return write_file(path, EXTRACTION_COLUMNS, rows())


WHITELIST_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<ListeBlanche xmlns="http://mssante.fr/listeblanche">
{domains}
</ListeBlanche>
"""


def whitelist_xml(domains: Iterable[tuple[str, str, Sequence[str]]]) -> str:
    """The trust-space whitelist with `(domain, description, operator DNs)` entries."""
    parts = []
    for name, description, dns in domains:
        dn_lines = "".join(f"<DNCertificatOperateur>{dn}</DNCertificatOperateur>" for dn in dns)
        parts.append(
            f"  <Domaine><Nom>{name}</Nom><Description>{description}</Description>{dn_lines}"
            "<DateMiseAJour>2026-11-01</DateMiseAJour></Domaine>"
        )
    return WHITELIST_TEMPLATE.format(domains="\n".join(parts))
