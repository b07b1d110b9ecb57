"""Synthetic population files in the CNAM layout, for the tests and the benchmarks.

Every INS is valid (its key computed) and unique: the counter is spread over the
department, commune and order digits. One person in five is a minor whose legal
representative is the adult written just before; sexes, birth dates and statuses vary
so that targeting by criteria has something to select.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from caducee.annuaire.identifiers import nir_key
from caducee.annuaire.population import POPULATION_COLUMNS

LAST_NAMES = ["Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau", "Laurent", "Simon", "Michel"]
FIRST_NAMES = ["Camille", "Léa", "Louise", "Emma", "Jade", "Hugo", "Louis", "Gabriel", "Arthur", "Jules", "Marie Anne", "Jean Pierre"]


def synthetic_ins(counter: int, sex: int, year: int) -> str:
    """A valid, unique INS for `counter` (below 95 million)."""
    order, commune, rest = counter % 1000, (counter // 1000) % 1000, counter // 1_000_000
    department, month = 1 + rest % 95, 1 + (rest // 95) % 12
    body = f"{sex}{year % 100:02d}{month:02d}{department:02d}{commune:03d}{order:03d}"
    return f"{body}{nir_key(body):02d}"


def population_lines(rows: int, *, seed: int = 7, start: int = 0, opposed_every: int = 0, closed_every: int = 0) -> Iterator[str]:
    """The header then `rows` lines; every `opposed_every`-th person opposed, every `closed_every`-th closed."""
    rng = random.Random(seed)
    yield "|".join(POPULATION_COLUMNS) + "\n"
    last_adult = ""
    for index in range(start, start + rows):
        minor = index % 5 == 4 and last_adult
        year = rng.randint(2009, 2023) if minor else rng.randint(1930, 2004)
        sex = 1 + rng.getrandbits(1)
        ins = synthetic_ins(index, sex, year)
        status = ""
        if opposed_every and index % opposed_every == opposed_every - 1:
            status = "opposition"
        elif closed_every and index % closed_every == closed_every - 2:
            status = "cloture"
        email = f"personne{index}@example.org" if index % 3 == 0 else ""
        born = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        last = LAST_NAMES[index % len(LAST_NAMES)]
        first = FIRST_NAMES[rng.randrange(len(FIRST_NAMES))]
        yield f"{ins}|{last}|{first}|{born}|{'M' if sex == 1 else 'F'}|{email}|{last_adult if minor else ''}|{status}\n"
        if not minor:
            last_adult = ins


def write_population(path: Path, rows: int, **options: int) -> Path:
    """Write a population file (streamed: memory does not grow with `rows`)."""
    with open(path, "w", encoding="utf-8") as handle:
        batch: list[str] = []
        for line in population_lines(rows, **options):
            batch.append(line)
            if len(batch) >= 10_000:
                handle.write("".join(batch))
                batch = []
        handle.write("".join(batch))
    return path
