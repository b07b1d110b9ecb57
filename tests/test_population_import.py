"""The CNAM's population import, line by line: bad rows with their numbers, re-imports that
update and record oppositions and closures, emails, duplicates, guardians, the hand-over
of the created profiles. Each case runs with the real batch size and with batches of a few
rows, so that what spans two batches (a duplicate, a shared email, a guardian listed after
the minor) is checked too."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import text

from caducee.annuaire import population
from caducee.annuaire.importing import ImportFileError
from caducee.annuaire.population import POPULATION_COLUMNS, NewProfile, PlainSource, import_population
from caducee.annuaire.synthetic_population import synthetic_ins

HEADER = "|".join(POPULATION_COLUMNS)


def ins(n: int, *, sex: int = 1, year: int = 1970) -> str:
    return synthetic_ins(n, sex, year)


def line(
    n: int,
    *,
    last: str = "Martin",
    first: str = "Camille",
    born: str = "1970-05-06",
    sex: str = "F",
    email: str = "",
    guardians: str = "",
    status: str = "",
) -> str:  # noqa: E501
    return f"{ins(n)}|{last}|{first}|{born}|{sex}|{email}|{guardians}|{status}"


def write(tmp_path: Path, lines: list[str], name: str = "population.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(("\n".join([HEADER, *lines]) + "\n").encode())
    return path


@pytest.fixture(params=["batches", "one batch"])
def batch_rows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Batches of 3 rows (everything crosses a boundary) or the module's own size."""
    if request.param == "batches":
        monkeypatch.setattr(population, "BATCH_ROWS", 3)
    return int(population.BATCH_ROWS)


class Handed:
    """An `on_created` that keeps what it was handed."""

    def __init__(self) -> None:
        self.profiles: list[NewProfile] = []
        self.calls = 0

    def prepare(self, dialect: str, profiles: list[NewProfile]) -> list[NewProfile]:
        return list(profiles)

    async def write(self, conn, prepared: list[NewProfile]) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        self.profiles.extend(prepared)


async def load(engine, settings, path: Path, **kwargs):  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        return await import_population(conn, PlainSource(path), patient_domain=settings.patient_domain, **kwargs)


async def patients(engine) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT p.id, p.ins, p.last_name, p.first_names, p.birth_date, p.sex, p.status, p.email, m.address, m.type, m.display_name "
                "FROM patients p LEFT JOIN mailboxes m ON m.patient_id = p.id"
            )
        )
        return {r.ins: dict(r._mapping) for r in rows}


async def guardianships(engine) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT g.ins, m.ins FROM guardianships x JOIN patients g ON g.id = x.guardian_id JOIN patients m ON m.id = x.minor_id")
        )
        return {(r[0], r[1]) for r in rows}


async def test_bad_rows_are_reported_with_their_line_numbers(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    wrong_key = ins(9)[:13] + f"{(int(ins(9)[13:]) % 97) + 1:02d}"
    lines = [
        line(1),  # 2
        line(2, last=""),  # 3
        f"{wrong_key}|Durand|Léa|1980-01-01|F|||",  # 4
        line(3, born="1980-02-30"),  # 5
        line(4, sex="X"),  # 6
        line(5, email="not an address"),  # 7
        line(6, status="décédé"),  # 8
        line(7, guardians=ins(7)),  # 9
        "only|three|columns",  # 10
        "",  # 11: blank, skipped
        line(8) + "|",  # 12: one trailing | is allowed
        line(10, first="  Jean   Pierre "),  # 13
        line(11, last="Lefèvre"),  # 14: saved as Latin-1
    ]
    path = write(tmp_path, lines)
    path.write_bytes(path.read_bytes().replace("Lefèvre".encode(), "Lefèvre".encode("latin-1")))
    report_stream = io.StringIO()
    report = await load(engine, settings, path, report_stream=report_stream)
    refused = {int(n): message for n, message in (row.split("\t", 1) for row in report_stream.getvalue().splitlines())}
    assert sorted(refused) == [3, 4, 5, 6, 7, 8, 9, 10, 14]
    assert "UTF-8" in refused[14] and "0xe8" in refused[14] and "wrong key" in refused[4]
    assert "last name" in refused[3] and "1980-02-30" in refused[5] and "'X'" in refused[6] and "not an address" in refused[7]
    assert "décédé" in refused[8] and "own legal representative" in refused[9] and "found 3" in refused[10]
    assert (report.rows_read, report.rows_ok, report.rows_bad, report.inserted) == (12, 3, 9, 3)
    assert [n for n, _ in report.bad_samples] == [3, 4, 5, 6, 7, 8, 9, 10, 14]
    stored = await patients(engine)
    assert set(stored) == {ins(1), ins(8), ins(10)} and stored[ins(10)]["first_names"] == "Jean Pierre"


async def test_a_file_without_rows_or_with_another_header_changes_nothing(engine, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ImportFileError):
        await load(engine, settings, write(tmp_path, []))
    other = tmp_path / "other.txt"
    other.write_text("Identifiant|Nom\n" + line(1) + "\n", encoding="utf-8")
    with pytest.raises(ImportFileError):
        await load(engine, settings, other)
    assert await patients(engine) == {}


async def test_profiles_mailboxes_and_a_re_import_that_changes_nothing(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    lines = [line(n, first="Marie Anne" if n % 2 else "Hugo", email=f"p{n}@example.org" if n % 3 == 0 else "") for n in range(10)]
    path = write(tmp_path, lines)
    handed = Handed()
    first = await load(engine, settings, path, on_created=handed)
    assert (first.rows_ok, first.inserted, first.updated, first.unchanged, first.profiles_for_letters) == (10, 10, 0, 0, 10)
    stored = await patients(engine)
    assert len(stored) == 10 and {p.ins for p in handed.profiles} == set(stored)
    assert len({p.patient_id for p in handed.profiles}) == 10
    for profile in handed.profiles:
        row = stored[profile.ins]
        assert (profile.patient_id, profile.first_names, profile.last_name) == (row["id"], row["first_names"], row["last_name"])
    one = stored[ins(1)]
    assert one["status"] == "created" and one["type"] == "PAT" and one["address"] == f"{ins(1)}@{settings.patient_domain}".lower()
    assert one["display_name"] == "Marie Martin" and str(one["birth_date"]) == "1970-05-06" and one["sex"] == "F"
    assert stored[ins(3)]["email"] == "p3@example.org" and stored[ins(1)]["email"] is None

    again = Handed()
    second = await load(engine, settings, path, on_created=again)
    assert (second.inserted, second.updated, second.unchanged, second.profiles_for_letters) == (0, 0, 10, 0)
    assert again.profiles == [] and await patients(engine) == stored


async def test_a_re_import_updates_and_records_oppositions_and_closures(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    await load(engine, settings, write(tmp_path, [line(n, email=f"p{n}@example.org") for n in range(8)], "v1.txt"))
    async with engine.begin() as conn:  # patient 0 activated her profile and chose another email
        await conn.execute(text("UPDATE patients SET status = 'activated', email = 'choisi@example.org' WHERE ins = :i"), {"i": ins(0)})
    handed = Handed()
    changed = [
        line(0, last="Dupont", email="cnam@example.org"),  # renamed; her own email stays
        line(1, last="Dupont"),  # renamed, email removed (not activated: the file's)
        line(2, email="p2@example.org", status="opposition"),
        line(3, email="p3@example.org", status="cloture"),
        line(4),
        line(5),
        line(6),
        line(7, email="p7@example.org"),
        line(20, status="opposition"),  # a new person who opposed: a profile that receives nothing, no code
    ]
    report = await load(engine, settings, write(tmp_path, changed, "v2.txt"), on_created=handed)
    assert (report.inserted, report.opposed, report.closed) == (1, 2, 1)
    assert report.updated == 5 and report.unchanged == 3  # 0, 1 renamed; 4, 5, 6 lost their email; 2, 3, 7 as they were
    assert handed.profiles == [] and report.profiles_for_letters == 0
    stored = await patients(engine)
    assert (stored[ins(0)]["last_name"], stored[ins(0)]["email"], stored[ins(0)]["status"]) == ("Dupont", "choisi@example.org", "activated")
    assert (stored[ins(1)]["last_name"], stored[ins(1)]["email"]) == ("Dupont", None)
    assert [stored[ins(n)]["status"] for n in (2, 3, 20)] == ["opposed", "closed", "opposed"]
    assert stored[ins(20)]["address"]  # it has its mailbox all the same

    # A later file that lists them as active undoes nothing; a closure wins over an opposition.
    report = await load(engine, settings, write(tmp_path, [line(2, status="cloture"), line(3, status="opposition"), line(20)], "v3.txt"))
    assert (report.opposed, report.closed) == (0, 1)
    stored = await patients(engine)
    assert [stored[ins(n)]["status"] for n in (2, 3, 20)] == ["closed", "closed", "opposed"]


async def test_emails_shared_or_taken_are_not_recorded(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    await load(engine, settings, write(tmp_path, [line(0, email="famille@example.org")], "v1.txt"))
    lines = [
        line(1, email="partage@example.org"),  # 2
        line(2),  # 3
        line(3),  # 4
        line(4, email="Partage@Example.org"),  # 5: the same address, written otherwise
        line(5, email="famille@example.org"),  # 6: patient 0's
        line(6, email="seul@example.org"),  # 7
    ]
    report_stream = io.StringIO()
    report = await load(engine, settings, write(tmp_path, lines, "v2.txt"), report_stream=report_stream)
    assert report.emails_dropped == 3 and report.rows_bad == 0 and report.inserted == 6
    assert sorted(int(row.split("\t")[0]) for row in report_stream.getvalue().splitlines()) == [2, 5, 6]
    assert all(message.startswith("warning") for _, message in report.bad_samples)
    stored = await patients(engine)
    assert [stored[ins(n)]["email"] for n in (0, 1, 4, 5, 6)] == ["famille@example.org", None, None, None, "seul@example.org"]


async def test_a_person_listed_twice_keeps_the_last_line(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    lines = [line(1, last="Premier"), line(2), line(3), line(4), line(1, last="Second"), line(5), line(2, last="Autre")]
    handed = Handed()
    report = await load(engine, settings, write(tmp_path, lines), on_created=handed)
    assert (report.rows_ok, report.duplicates, report.inserted, report.profiles_for_letters) == (7, 2, 5, 5)
    assert sorted(p.ins for p in handed.profiles) == sorted(ins(n) for n in range(1, 6))
    stored = await patients(engine)
    assert (stored[ins(1)]["last_name"], stored[ins(2)]["last_name"]) == ("Second", "Autre")


async def test_guardianships_follow_the_file(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    adults = [line(n) for n in (1, 2, 3)]
    minors = [
        line(10, born="2015-01-01", guardians=f"{ins(1)},{ins(2)}"),
        line(11, born="2016-01-01", guardians=f"{ins(3)}, {ins(99)}"),  # 99 has no profile
        line(12, born="2017-01-01", guardians=ins(4)),  # 4 is listed after the minor
    ]
    report_stream = io.StringIO()
    report = await load(engine, settings, write(tmp_path, [*adults, *minors, line(4)], "v1.txt"), report_stream=report_stream)
    assert (report.guardianships_added, report.guardianships_removed, report.guardians_unknown) == (4, 0, 1)
    assert report_stream.getvalue().startswith("6\t") and ins(99) in report_stream.getvalue()
    expected = {(ins(1), ins(10)), (ins(2), ins(10)), (ins(3), ins(11)), (ins(4), ins(12))}
    assert await guardianships(engine) == expected

    # Minor 10 now has one representative; 11 is listed without any; 12 is not listed (kept).
    later = [line(10, born="2015-01-01", guardians=ins(2)), line(11, born="2016-01-01"), *adults]
    report = await load(engine, settings, write(tmp_path, later, "v2.txt"))
    assert (report.guardianships_added, report.guardianships_removed) == (0, 2)
    assert await guardianships(engine) == {(ins(2), ins(10)), (ins(4), ins(12))}
    report = await load(engine, settings, write(tmp_path, later, "v2.txt"))
    assert (report.guardianships_added, report.guardianships_removed) == (0, 0)


class Refused(PlainSource):
    def finish(self) -> None:
        raise ImportFileError("the signature is not the CNAM's")


async def test_a_file_refused_at_its_end_changes_nothing(engine, settings, tmp_path, batch_rows) -> None:  # type: ignore[no-untyped-def]
    handed = Handed()
    path = write(tmp_path, [line(n, guardians=ins(0) if n else "") for n in range(7)])
    with pytest.raises(ImportFileError):
        async with engine.begin() as conn:
            await import_population(conn, Refused(path), patient_domain=settings.patient_domain, on_created=handed)
    assert handed.calls == 0 and await patients(engine) == {} and await guardianships(engine) == set()
