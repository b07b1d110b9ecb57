"""The demo world: what it seeds, that it seeds only once, and its credentials file."""

from __future__ import annotations

import json
import stat

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import demo
from caducee.annuaire import service
from caducee.annuaire.identifiers import (
    luhn_valid,
    validate_finess,
    validate_ins,
    validate_rpps,
)
from caducee.annuaire.models import (
    Guardianship,
    Mailbox,
    Patient,
    PatientStatus,
    TrustDomain,
)
from caducee.config import Settings
from caducee.core.passwords import verify_password


async def test_demo_seed_world_and_credentials(engine: AsyncEngine, settings: Settings) -> None:
    credentials = await demo.seed(engine, settings)
    assert credentials is not None
    path = demo.credentials_path(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == credentials

    async with engine.connect() as conn:
        domains = {row.domain: row for row in (await conn.execute(select(TrustDomain))).all()}
        assert domains["demo.mssante.fr"].is_local and domains["patient.mssante.fr"].is_local
        assert not domains[demo.PEER_OPERATOR_DOMAIN].is_local and domains[demo.PEER_OPERATOR_DOMAIN].operator_dns

        for key, profession in (("doctor", "10"), ("nurse", "60")):
            account = credentials["professionals"][key]
            entry = await service.get_mailbox(conn, account["address"])
            assert entry is not None and entry.profession_code == profession and entry.type == "PER"
            stored = (await conn.execute(select(Mailbox.password_hash).where(Mailbox.address == account["address"]))).scalar_one()
            assert verify_password(stored, account["password"]) and not verify_password(stored, "wrong")

        pharmacy = await service.search(conn, name="pharmacie", officine=True)
        assert [item.address for item in pharmacy.items] == [credentials["professionals"]["pharmacy"]["address"]]
        assert pharmacy.items[0].type == "ORG"

        patients = {row.ins: row for row in (await conn.execute(select(Patient))).all()}
        assert len(patients) == 5  # with Noah Petit, a minor in the care of the ASE (no guardian account)
        assert all(validate_ins(ins) == ins for ins in patients)
        waiting = credentials["patients"]["not_activated"]["ins"]
        assert patients.pop(waiting).status == PatientStatus.CREATED.value
        assert len(credentials["patients"]["not_activated"]["activation_code"]) == 8
        assert all(row.status == PatientStatus.ACTIVATED.value for row in patients.values())
        guardian = patients[credentials["patients"]["adult_1"]["ins"]]
        minor = patients[credentials["patients"]["minor"]["ins"]]
        link = (await conn.execute(select(Guardianship))).one()
        assert (link.guardian_id, link.minor_id) == (guardian.id, minor.id)
        patient_boxes = (await conn.execute(select(func.count()).select_from(Mailbox).where(Mailbox.type == "PAT"))).scalar_one()
        assert patient_boxes == 5
        # Patients are never listed in the directory.
        assert await service.get_mailbox(conn, credentials["patients"]["adult_1"]["address"]) is None
        cnam = await service.get_mailbox(conn, credentials["cnam"]["address"])
        assert cnam is not None and cnam.type == "APP"

    assert validate_rpps(demo.DOCTOR_RPPS) and validate_finess(demo.PHARMACY_FINESS)
    assert luhn_valid("73282932000074")

    # A second start keeps the world and the credentials as they are.
    assert await demo.seed(engine, settings) is None
    assert json.loads(path.read_text()) == credentials


async def test_generated_directory_files_never_reuse_the_demo_numbers(engine: AsyncEngine, settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The test-data generator's RPPS and FINESS numbers are in ranges of their own: a generated
    file imported into the demo database adds people and structures, it never rewrites the
    demo's doctor, nurse, pharmacist or pharmacy."""
    from caducee.annuaire.formats import EXTRACTION_COLUMNS, PS_COLUMNS
    from caducee.annuaire.importer import import_on_connection
    from caducee.annuaire.models import Professional, Structure
    from caducee.annuaire.synthetic import extraction_row, finess, ps_row, rpps, write_file

    demo_rpps = {demo.DOCTOR_RPPS, demo.NURSE_RPPS, demo.PHARMACIST_RPPS, demo.UNKNOWN_RPPS}
    generated = {rpps(n) for n in (*range(5_000), 99_999_999)}
    assert not generated & demo_rpps and all(validate_rpps(number) for number in list(generated)[:100])
    assert demo.PHARMACY_FINESS not in {finess(n) for n in (*range(5_000), 499_999)}

    await demo.seed(engine, settings, certificates=False)
    async with engine.connect() as conn:
        before = (await conn.execute(select(Professional.national_id, Professional.last_name).order_by(Professional.national_id))).all()
        pharmacy = (await conn.execute(select(Structure.name).where(Structure.identifier == demo.PHARMACY_FINESS))).scalar_one()
    extraction = write_file(
        tmp_path / "Extraction_Correspondance_MSSante_1.txt", EXTRACTION_COLUMNS, [extraction_row(n) for n in range(60)]
    )
    people = write_file(tmp_path / "PS_LibreAcces_Personne_activite_1.txt", PS_COLUMNS, [ps_row(n) for n in range(100, 160)])
    for kind, path in (("extraction", extraction), ("ps", people)):
        async with engine.begin() as conn:
            report = await import_on_connection(conn, kind, path)
        assert report.rows_bad == 0 and report.updated == 0, report.summary()
    async with engine.connect() as conn:
        after = dict((await conn.execute(select(Professional.national_id, Professional.last_name))).all())
        assert all(after[national_id] == name for national_id, name in before)
        assert (await conn.execute(select(Structure.name).where(Structure.identifier == demo.PHARMACY_FINESS))).scalar_one() == pharmacy
        assert (await conn.execute(select(func.count()).select_from(Professional))).scalar_one() == len(before) + 120
