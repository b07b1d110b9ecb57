"""Issue 21, point 10: the operator administers professionals (with their mailboxes) and
patients from the command line: add, change, retire, reset a password. Each run of the
command is checked by what it changes for the people concerned: a mail client's login, the
directory search, the patient's activation, the gateway's view of a closed profile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import cli, demo
from caducee.annuaire import admin, patients, service
from caducee.annuaire.models import Mailbox, Professional
from caducee.annuaire.synthetic import rpps
from caducee.config import Settings
from caducee.identity.mailauth import MailboxAuthenticator
from caducee.notify.notifier import notifier_from_settings
from caducee.webmail.accounts import Accounts
from caducee.webmail.codes import CodeHasher

NEW_RPPS = rpps(4242)
ADDRESS = "lucie.moreau@demo.mssante.fr"
NEW_INS = "269054523407823"  # a woman born in May 1969 in Loiret (45), valid key


@pytest.fixture
async def world(engine: AsyncEngine, settings: Settings) -> Settings:
    await demo.seed(engine, settings, certificates=False)
    return settings


async def caducee(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`caducee ARGS` in this process (in a thread: the command runs its own event loop)."""
    capsys.readouterr()
    options = ["--data-dir", str(settings.data_dir), "--database-url", str(settings.database_url)]
    code = await asyncio.to_thread(cli.main, [*args, *options])
    out, err = capsys.readouterr()
    return code, out, err


def password_in(out: str) -> str:
    return next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "password" in line and ": " in line)


async def logs_in(engine: AsyncEngine, settings: Settings, address: str, password: str) -> bool:
    return await MailboxAuthenticator(engine, settings.local_domains).verify(address, password, "192.0.2.1") == address


async def test_professional_added_changed_reset_and_retired(engine: AsyncEngine, world: Settings, capsys) -> None:  # type: ignore[no-untyped-def]
    settings = world
    code, out, err = await caducee(
        settings,
        capsys,
        "professionals",
        "add",
        "--rpps",
        NEW_RPPS,
        "--address",
        ADDRESS,
        "--first-name",
        "Lucie",
        "--last-name",
        "Moreau",
        "--profession",
        "50",
        "--structure",
        "SIRET:73282932000074",
    )
    assert code == 0, err
    assert "created with its professional" in out and f"caducee pki issue {ADDRESS}" in out
    password = password_in(out)
    assert await logs_in(engine, settings, ADDRESS, password)
    async with engine.connect() as conn:
        found = await service.search(conn, name="moreau lucie")
        assert [(item.address, item.profession_label, item.structure_name) for item in found.items] == [
            (ADDRESS, "Sage-Femme", "Cabinet médical des Lilas")
        ]
        assert (await conn.execute(select(Mailbox.source).where(Mailbox.address == ADDRESS))).scalar_one() == "local"

    # Refusals say why and change nothing.
    for args, expected in (
        (("--rpps", NEW_RPPS, "--address", ADDRESS), "already exists"),
        (("--rpps", "10000000008", "--address", "x@demo.mssante.fr"), "Luhn"),
        (("--rpps", rpps(4243), "--address", "y@demo.mssante.fr"), "give --first-name, --last-name, --profession"),
        (("--rpps", NEW_RPPS, "--address", "lucie@ailleurs.fr"), "not one of our domains"),
        (("--rpps", NEW_RPPS, "--address", "lucie@patient.mssante.fr"), "the patients' domain"),
        (("--rpps", NEW_RPPS, "--address", "l2@demo.mssante.fr", "--structure", "FINESS:999999999"), "no structure FINESS:999999999"),
        (("--rpps", rpps(4244), "--address", "z@demo.mssante.fr", "--first-name", "A", "--last-name", "B", "--profession", "99"), "label"),
    ):
        code, _, err = await caducee(settings, capsys, "professionals", "add", *args)
        assert code == 1 and expected in err and "nothing was changed" in err, (args, err)
    async with engine.connect() as conn:
        assert (
            await conn.execute(select(Mailbox.id).where(Mailbox.address.in_(["l2@demo.mssante.fr", "z@demo.mssante.fr"])))
        ).first() is None

    # A second mailbox for the same professional, then a change of name seen on both.
    code, out, err = await caducee(settings, capsys, "professionals", "add", "--rpps", NEW_RPPS, "--address", "l.moreau@demo.mssante.fr")
    assert code == 0 and "already in the annuaire" in out, err
    code, out, err = await caducee(
        settings, capsys, "professionals", "change", NEW_RPPS, "--last-name", "Moreau-Petit", "--civility", "Mme"
    )
    assert code == 0, err
    code, out, err = await caducee(
        settings, capsys, "professionals", "change", ADDRESS, "--service", "Suivi de grossesse", "--liste-rouge", "yes"
    )
    assert code == 0, err
    async with engine.connect() as conn:
        names = dict(
            (
                await conn.execute(select(Mailbox.address, Mailbox.display_name).where(Mailbox.professional_national_id == "8" + NEW_RPPS))
            ).all()
        )
        assert names == {ADDRESS: "Mme Lucie Moreau-Petit", "l.moreau@demo.mssante.fr": "Mme Lucie Moreau-Petit"}
        assert [item.address for item in (await service.search(conn, name="moreau-petit")).items] == ["l.moreau@demo.mssante.fr"]
    code, _, err = await caducee(settings, capsys, "professionals", "change", NEW_RPPS, "--service", "x")
    assert code == 1 and "name it by its address" in err
    code, _, err = await caducee(settings, capsys, "professionals", "change", ADDRESS)
    assert code == 1 and "nothing to change" in err

    # A forgotten password: a new one, the old one refused.
    code, out, err = await caducee(settings, capsys, "professionals", "reset-password", ADDRESS)
    assert code == 0, err
    renewed = password_in(out)
    assert renewed != password and await logs_in(engine, settings, ADDRESS, renewed)
    assert not await logs_in(engine, settings, ADDRESS, password)
    code, _, err = await caducee(settings, capsys, "professionals", "reset-password", demo.ADULT_1_INS.lower() + "@patient.mssante.fr")
    assert code == 1 and "Mot de passe oublié" in err

    # Retiring one mailbox, then the professional: no login, out of the search, the address never given again.
    code, out, err = await caducee(settings, capsys, "professionals", "retire", "l.moreau@demo.mssante.fr")
    assert code == 0 and "retired: l.moreau@demo.mssante.fr" in out, err
    code, out, err = await caducee(settings, capsys, "professionals", "show", NEW_RPPS)
    assert "l.moreau@demo.mssante.fr PER (retired)" in out and f"{ADDRESS} PER\n" in out
    code, out, err = await caducee(settings, capsys, "professionals", "retire", NEW_RPPS)
    assert code == 0 and ADDRESS in out, err
    assert not await logs_in(engine, settings, ADDRESS, renewed)
    async with engine.connect() as conn:
        assert await service.get_mailbox(conn, ADDRESS) is None
        assert (await conn.execute(select(Professional.active).where(Professional.national_id == "8" + NEW_RPPS))).scalar_one() is False
        parties = await service.resolve_parties(conn, [ADDRESS], local_domains=settings.local_domains)
        assert parties[ADDRESS].mailbox_id is None  # the gateway refuses mail for it: unknown local mailbox
    code, _, err = await caducee(settings, capsys, "professionals", "add", "--rpps", NEW_RPPS, "--address", ADDRESS)
    assert code == 1 and "retired on" in err and "not given to anyone else" in err
    code, _, err = await caducee(settings, capsys, "professionals", "retire", ADDRESS)
    assert code == 1 and "already retired" in err


async def test_patient_added_changed_and_retired(engine: AsyncEngine, world: Settings, capsys) -> None:  # type: ignore[no-untyped-def]
    settings = world
    base = ("--last-name", "Leroy", "--first-names", "Anne  Marie", "--birth-date", "1969-05-12", "--sex", "F")
    for args, expected in (
        ((NEW_INS[:-2] + "00", *base), "wrong key"),
        ((demo.ADULT_1_INS, *base), "already exists"),
        ((NEW_INS, *base[:-1], "X"), "M, F or I"),
        ((NEW_INS, *base[:5], "12/05/1969", *base[6:]), "YYYY-MM-DD"),
        ((NEW_INS, *base, "--email", "claire.martin@example.org"), "already the email of another profile"),
    ):
        code, _, err = await caducee(settings, capsys, "patients", "add", *args)
        assert code == 1 and expected in err, (args, err)

    code, out, err = await caducee(settings, capsys, "patients", "add", NEW_INS, *base)
    assert code == 0, err
    assert f"profile of Anne Leroy ({NEW_INS}) created" in out and "not activated yet" in out
    provisional = out.split("provisional code ", 1)[1].split(",")[0]
    assert len(provisional) == 8

    code, out, err = await caducee(
        settings, capsys, "patients", "change", NEW_INS, "--last-name", "Leroy-Dubois", "--email", "anne.leroy@example.org"
    )
    assert code == 0 and "Anne Leroy-Dubois" in out, err
    async with engine.connect() as conn:
        account = await patients.find_by_ins(conn, NEW_INS)
        assert account is not None and account.status == "created" and account.email == "anne.leroy@example.org"
        assert account.last_name == "Leroy-Dubois" and account.first_names == "Anne Marie"

    # The patient activates with the printed code, as with a letter from the population import.
    accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(settings_key(settings)))
    activated = await accounts.activate(
        NEW_INS, provisional, "anne.leroy@example.org", "un mot de passe solide 42", "un mot de passe solide 42"
    )
    assert activated.ins == NEW_INS

    code, out, err = await caducee(settings, capsys, "patients", "retire", NEW_INS)
    assert code == 0 and "closed" in out, err
    async with engine.connect() as conn:
        assert (await patients.find_by_ins(conn, NEW_INS)).status == "closed"  # type: ignore[union-attr]
    code, _, err = await caducee(settings, capsys, "patients", "retire", NEW_INS)
    assert code == 1 and "already closed" in err
    code, _, err = await caducee(settings, capsys, "patients", "change", NEW_INS)
    assert code == 1 and "nothing to change" in err


def settings_key(settings: Settings) -> bytes:
    from caducee.crypto.atrest import load_master_key

    return load_master_key(settings.data_dir)


def test_admin_errors_are_plain_sentences() -> None:
    with pytest.raises(admin.AdminError, match="RPPS number .* or"):
        admin.national_id_of(None, None)
    with pytest.raises(admin.AdminError, match="not one of our domains"):
        admin.own_address("a@b.fr", ["demo.mssante.fr", "patient.mssante.fr"], "patient.mssante.fr")
    assert admin.profession_label("60", None) == "Infirmier"
    assert Path(cli.__file__).exists()
