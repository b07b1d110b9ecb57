"""Importers of the public directory files, on SQLite and PostgreSQL.

Files are generated in the real layouts (header, 31 or 56 `|` columns, UTF-8), with the
faults real files have: wrong column counts, bad keys, Latin-1 lines, duplicates.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import service
from caducee.annuaire.formats import EXTRACTION_COLUMNS, PS_COLUMNS
from caducee.annuaire.importer import import_on_connection
from caducee.annuaire.importing import ImportFileError
from caducee.annuaire.models import (
    ImportRun,
    Mailbox,
    MailboxType,
    Professional,
    Structure,
    TrustDomain,
)
from caducee.annuaire.synthetic import (
    extraction_row,
    finess,
    ps_row,
    whitelist_xml,
    write_file,
)


async def run(engine: AsyncEngine, kind: str, path: Path, **kwargs):  # type: ignore[no-untyped-def]
    async with engine.begin() as conn:
        return await import_on_connection(conn, kind, path, **kwargs)


async def scalar(engine: AsyncEngine, query):  # type: ignore[no-untyped-def]
    async with engine.connect() as conn:
        return (await conn.execute(query)).scalar_one()


async def test_extraction_import_creates_mailboxes_people_and_structures(engine: AsyncEngine, tmp_path: Path) -> None:
    rows = [extraction_row(n) for n in range(20)]
    rows.append(
        extraction_row(
            100,
            mailbox_type="ORG",
            address="contact@pharmacie-du-port.mssante.fr",
            structure_name="PHARMACIE DU PORT",
            city=("13002", "MARSEILLE"),
        )
    )
    path = write_file(tmp_path / "Extraction_Correspondance_MSSante_20261122.txt", EXTRACTION_COLUMNS, rows)
    report = await run(engine, "extraction", path)
    assert (report.rows_read, report.rows_ok, report.rows_bad) == (21, 21, 0)
    assert report.inserted == 21 and report.updated == 0 and report.retired == 0
    assert await scalar(engine, select(func.count()).select_from(Mailbox)) == 21
    assert await scalar(engine, select(func.count()).select_from(Professional)) == 20
    assert await scalar(engine, select(func.count()).select_from(ImportRun)) == 1

    async with engine.connect() as conn:
        pharmacies = await service.search(conn, name="pharmacie port", place="marseille")
        assert [item.address for item in pharmacies.items] == ["contact@pharmacie-du-port.mssante.fr"]
        assert pharmacies.items[0].is_officine and pharmacies.items[0].city == "MARSEILLE"
        doctor = await service.get_mailbox(conn, rows[0][1])
        assert doctor is not None and doctor.last_name == rows[0][9] and doctor.profession_code == rows[0][13]


async def test_bad_rows_are_reported_with_line_numbers_and_never_abort(engine: AsyncEngine, tmp_path: Path) -> None:
    good = [extraction_row(n) for n in range(5)]
    bad_key = extraction_row(10, national_id="810000000008")  # RPPS with a wrong Luhn digit
    bad_address = extraction_row(11, address="not an address@x.fr")
    bad_type = extraction_row(12, mailbox_type="XYZ")
    bad_finess = extraction_row(13, structure_id="750000011")
    short = "|".join(extraction_row(14)[:20]) + "\n"
    long = "|".join(extraction_row(15) + ["extra", "columns"]) + "\n"
    path = tmp_path / "extraction.txt"
    write_file(
        path,
        EXTRACTION_COLUMNS,
        [good[0], bad_key, good[1], bad_address, bad_type, short, long, "\n", good[2], bad_finess, good[3], good[4]],
    )
    # A line saved in Latin-1 in the middle of the file.
    with open(path, "ab") as handle:
        handle.write("|".join(extraction_row(16, last_name="LEFÈVRE")).encode("latin-1") + b"\n")
        handle.write("|".join(extraction_row(17)).encode("utf-8") + b"\n")
    report_file = io.StringIO()
    report = await run(engine, "extraction", path, report_stream=report_file)
    assert report.rows_ok == 6
    assert report.rows_bad == 7
    messages = dict(report.bad_samples)
    assert "Luhn" in messages[3]
    assert "not allowed" in messages[5]
    assert "unknown mailbox type 'XYZ'" in messages[6]
    assert "expected 31 columns" in messages[7] and "found 20" in messages[7]
    assert "found 33" in messages[8]
    assert "FINESS" in messages[11]
    assert "not valid UTF-8" in messages[14]
    assert report_file.getvalue().count("\n") == 7
    assert report_file.getvalue().startswith("3\t")
    assert await scalar(engine, select(func.count()).select_from(Mailbox)) == 6


async def test_wrong_file_is_refused_and_changes_nothing(engine: AsyncEngine, tmp_path: Path) -> None:
    ps_file = write_file(tmp_path / "PS_LibreAcces_Personne_activite.txt", PS_COLUMNS, [ps_row(1)])
    with pytest.raises(ImportFileError, match="header has 56 columns where a Extraction_Correspondance_MSSante file has 31"):
        await run(engine, "extraction", ps_file)
    empty = write_file(tmp_path / "empty.txt", EXTRACTION_COLUMNS, [])
    with pytest.raises(ImportFileError, match="no rows"):
        await run(engine, "extraction", empty)
    renamed = list(EXTRACTION_COLUMNS)
    renamed[0] = "Adresse"
    wrong_header = write_file(tmp_path / "wrong.txt", renamed, [extraction_row(1)])
    with pytest.raises(ImportFileError, match="not with a Extraction_Correspondance_MSSante column name"):
        await run(engine, "extraction", wrong_header)
    assert await scalar(engine, select(func.count()).select_from(Mailbox)) == 0


async def test_reimport_updates_retires_and_revives(engine: AsyncEngine, tmp_path: Path) -> None:
    first = [extraction_row(n) for n in range(10)]
    await run(engine, "extraction", write_file(tmp_path / "v1.txt", EXTRACTION_COLUMNS, first))

    second = [extraction_row(n) for n in range(10) if n != 3]
    second[0] = extraction_row(0, city=("06000", "NICE"))
    report = await run(engine, "extraction", write_file(tmp_path / "v2.txt", EXTRACTION_COLUMNS, second, trailing_pipe=True))
    assert (report.inserted, report.updated, report.unchanged, report.retired) == (0, 1, 8, 1)
    assert "1 changed, 8 unchanged, 1 retired" in report.summary()
    async with engine.connect() as conn:
        assert await service.get_mailbox(conn, first[3][1]) is None  # retired: no longer published
        moved = await service.get_mailbox(conn, first[0][1])
        assert moved is not None and moved.city == "NICE"
    retired = await scalar(engine, select(Mailbox.active).where(Mailbox.address == first[3][1]))
    assert retired is False

    report = await run(engine, "extraction", write_file(tmp_path / "v3.txt", EXTRACTION_COLUMNS, first))
    assert (report.inserted, report.updated, report.unchanged, report.retired) == (0, 2, 8, 0)  # moved back, revived
    async with engine.connect() as conn:
        assert await service.get_mailbox(conn, first[3][1]) is not None


async def test_duplicate_addresses_keep_the_last_line(engine: AsyncEngine, tmp_path: Path) -> None:
    rows = [extraction_row(1), extraction_row(1, city=("06000", "NICE")), extraction_row(2)]
    report = await run(engine, "extraction", write_file(tmp_path / "dup.txt", EXTRACTION_COLUMNS, rows))
    assert (report.duplicates, report.inserted, report.updated, report.unchanged) == (1, 2, 0, 0)
    async with engine.connect() as conn:
        entry = await service.get_mailbox(conn, rows[0][1])
    assert entry is not None and entry.city == "NICE"


async def test_mostly_bad_file_does_not_retire(engine: AsyncEngine, tmp_path: Path) -> None:
    await run(engine, "extraction", write_file(tmp_path / "v1.txt", EXTRACTION_COLUMNS, [extraction_row(n) for n in range(6)]))
    broken = [extraction_row(0)] + ["garbage line without columns\n"] * 5
    report = await run(engine, "extraction", write_file(tmp_path / "v2.txt", EXTRACTION_COLUMNS, broken))
    assert report.retire_skipped and report.retired == 0
    assert "nothing was retired" in report.summary()
    assert await scalar(engine, select(func.count()).select_from(Mailbox).where(Mailbox.active.is_(True))) == 6


async def test_our_own_mailboxes_are_not_rewritten_by_the_public_file(engine: AsyncEngine, tmp_path: Path) -> None:
    async with engine.begin() as conn:
        await service.add_mailbox(
            conn, address="sophie.bernard@demo.mssante.fr", type=MailboxType.PER, display_name="Dr Sophie Bernard", password_hash="hash"
        )
    row = extraction_row(1, address="sophie.bernard@demo.mssante.fr", last_name="AUTRE")
    await run(engine, "extraction", write_file(tmp_path / "x.txt", EXTRACTION_COLUMNS, [row]))
    await run(engine, "extraction", write_file(tmp_path / "y.txt", EXTRACTION_COLUMNS, [extraction_row(2)]))
    async with engine.connect() as conn:
        local = (await conn.execute(select(Mailbox).where(Mailbox.address == "sophie.bernard@demo.mssante.fr"))).one()
    assert local.display_name == "Dr Sophie Bernard" and local.password_hash == "hash" and local.active


async def test_ps_file_import_people_pharmacies_and_retirement(engine: AsyncEngine, tmp_path: Path) -> None:
    officine = finess(4242)
    rows = [ps_row(n) for n in range(8)]
    rows.append(ps_row(1, site_finess=finess(777)))  # a second activity of the same person
    rows.append(ps_row(20, sector="SA33", site_finess=officine, site_name="PHARMACIE CENTRALE", profession=("21", "Pharmacien")))
    rows.append("|".join(ps_row(31, national_id="810000000008")) + "|\n")  # wrong Luhn
    path = write_file(tmp_path / "PS_LibreAcces_Personne_activite_202611.txt", PS_COLUMNS, rows, trailing_pipe=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("|".join(ps_row(30, national_id="810000000008")) + "|\n")
    report = await run(engine, "ps", path)
    assert report.rows_bad == 2 and report.inserted == 9
    assert "Luhn" in report.bad_samples[0][1]
    assert await scalar(engine, select(func.count()).select_from(Professional).where(Professional.in_ps_file.is_(True))) == 9
    assert await scalar(engine, select(Structure.is_officine).where(Structure.identifier == officine)) is True

    report = await run(engine, "ps", write_file(tmp_path / "ps2.txt", PS_COLUMNS, rows[:5]))
    assert (report.retired, report.updated, report.unchanged) == (4, 0, 5)
    assert await scalar(engine, select(func.count()).select_from(Professional).where(Professional.active.is_(True))) == 5


async def test_whitelist_import(engine: AsyncEngine, tmp_path: Path) -> None:
    async with engine.begin() as conn:
        await service.add_trust_domain(conn, "demo.mssante.fr", is_local=True)
    entries = [
        ("ch-exemple.mssante.fr", "CH Exemple", ["CN=mx.ch-exemple.mssante.fr,O=CH Exemple,C=FR"]),
        ("operateur-b.mssante.fr", "Opérateur B", ["CN=a,O=B,C=FR", "CN=b,O=B,C=FR"]),
        ("demo.mssante.fr", "ours, listed nationally", ["CN=demo,O=Caducee,C=FR"]),
        ("not a domain", "broken", ["CN=x"]),
        ("sans-dn.mssante.fr", "no DN", []),
    ]
    path = tmp_path / "listeblanche.xml"
    path.write_text(whitelist_xml(entries), encoding="utf-8")
    bad_rows = io.StringIO()
    report = await run(engine, "whitelist", path, report_stream=bad_rows)
    assert (report.rows_read, report.rows_bad, report.inserted) == (5, 2, 2)
    dns = await scalar(engine, select(TrustDomain.operator_dns).where(TrustDomain.domain == "operateur-b.mssante.fr"))
    assert dns.splitlines() == ["CN=a,O=B,C=FR", "CN=b,O=B,C=FR"]
    # The file's real lines (the declaration and the root element take lines 1 and 2), not the entries' ranks.
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line_no for line_no, _ in report.bad_samples] == [6, 7]
    assert "not a domain" in lines[6 - 1] and "sans-dn" in lines[7 - 1]
    assert bad_rows.getvalue().splitlines()[0].startswith("6\t") and "line 7: Domaine sans-dn.mssante.fr" in report.summary()

    # The same file again: nothing changed, and the report says so.
    report = await run(engine, "whitelist", path)
    assert (report.inserted, report.updated, report.unchanged, report.retired) == (0, 0, 2, 0)
    assert "0 added, 0 changed, 2 unchanged" in report.summary()
    changed = [entries[0], ("operateur-b.mssante.fr", "Opérateur B", ["CN=b,O=B,C=FR"]), *entries[2:]]
    path.write_text(whitelist_xml(changed), encoding="utf-8")
    report = await run(engine, "whitelist", path)
    assert (report.updated, report.unchanged) == (1, 1)
    path.write_text(whitelist_xml(entries), encoding="utf-8")
    await run(engine, "whitelist", path)

    path.write_text(whitelist_xml(entries[1:3]), encoding="utf-8")
    report = await run(engine, "whitelist", path)
    assert report.retired == 1
    active = await scalar(engine, select(TrustDomain.active).where(TrustDomain.domain == "ch-exemple.mssante.fr"))
    assert active is False
    assert await scalar(engine, select(TrustDomain.active).where(TrustDomain.domain == "demo.mssante.fr")) is True

    path.write_text("<ListeBlanche><Domaine><Nom>x.fr", encoding="utf-8")
    with pytest.raises(ImportFileError, match="not well-formed XML"):
        await run(engine, "whitelist", path)
    path.write_text("<Autre/>", encoding="utf-8")
    with pytest.raises(ImportFileError, match="no Domaine element"):
        await run(engine, "whitelist", path)
    bomb = '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><ListeBlanche><Domaine><Nom>&b;</Nom></Domaine></ListeBlanche>'
    path.write_text(bomb, encoding="utf-8")
    with pytest.raises(ImportFileError, match="DTD or entities"):
        await run(engine, "whitelist", path)
    path.write_text("<ListeBlanche>\n<Domaine>\n<Nom>x.fr</Nom>\n</Domain>", encoding="utf-8")
    with pytest.raises(ImportFileError, match="line 4"):
        await run(engine, "whitelist", path)


def test_cli_import_reports_and_exit_codes(tmp_path: Path, database_url: str) -> None:
    rows = [extraction_row(n) for n in range(3)] + [extraction_row(9, national_id="810000000008")]
    path = write_file(tmp_path / "Extraction_Correspondance_MSSante_1.txt", EXTRACTION_COLUMNS, rows)
    env = {**os.environ, "CADUCEE_DATABASE_URL": database_url, "CADUCEE_DATA_DIR": str(tmp_path / "var")}
    report = tmp_path / "bad.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "caducee", "annuaire", "import", "extraction", str(path), "--report", str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "4 rows read, 3 accepted, 1 refused; 3 added" in done.stdout
    assert "line 5:" in done.stdout
    assert report.read_text().startswith("5\t")

    wrong = write_file(tmp_path / "ps.txt", PS_COLUMNS, [ps_row(1)])
    done = subprocess.run(
        [sys.executable, "-m", "caducee", "annuaire", "import", "extraction", str(wrong)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "is this the right file?" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "caducee", "annuaire", "import", "ps", str(tmp_path / "nope.txt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
