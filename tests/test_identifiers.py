"""Validators: each identifier with good values, and bad ones whose message says why."""

from __future__ import annotations

import pytest

from caducee.annuaire.identifiers import (
    InvalidIdentifier,
    luhn_valid,
    national_id_for,
    nir_key,
    validate_adeli,
    validate_finess,
    validate_ins,
    validate_mailbox_address,
    validate_rpps,
    validate_siret,
)
from caducee.annuaire.synthetic import with_luhn


@pytest.mark.parametrize(
    "ins",
    [
        "285037512345688",  # born in Paris
        "2 85 03 75 123 456 88",  # as printed on a card
        "178112A12345684",  # Corsica, 2A counts as 19
        "178112b12345614",  # Corsica, 2B counts as 18, lower case accepted
        "755037512345647",  # NIA (temporary number) starts with 7
    ],
)
def test_ins_accepts_valid_numbers(ins: str) -> None:
    assert validate_ins(ins) == ins.replace(" ", "").upper()


@pytest.mark.parametrize(
    ("ins", "message"),
    [
        ("", "empty"),
        ("28503751234568", "15 characters"),
        ("2850375123456888", "15 characters"),
        ("285037512345687", "wrong key: for 2850375123456 the key is 88, not 87"),
        ("178112A12345650", "the key is 84"),
        ("178112C12345650", "digits (2A or 2B"),
        ("985037512345688", "starts with 1 to 8"),
        ("28503751234568X", "digits"),
    ],
)
def test_ins_rejects_with_a_clear_reason(ins: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        validate_ins(ins)
    assert message in str(caught.value)
    assert caught.value.kind == "INS"


def test_nir_key_corsica_substitution() -> None:
    assert nir_key("178112A123456") == 97 - (1781119123456 % 97)
    assert nir_key("178112B123456") == 97 - (1781118123456 % 97)


@pytest.mark.parametrize(("value", "ok"), [("10000000009", True), ("10000000008", False), ("79927398713", True)])
def test_luhn(value: str, ok: bool) -> None:
    assert luhn_valid(value) is ok


@pytest.mark.parametrize(
    ("value", "message"),
    [("1000000000", "exactly 11 digits"), ("1000000000A", "exactly 11 digits"), ("10000000008", "Luhn")],
)
def test_rpps_rejects(value: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        validate_rpps(value)


def test_rpps_and_national_ids() -> None:
    assert validate_rpps(" 10000000009 ") == "10000000009"
    assert national_id_for("8", "10000000009") == "810000000009"
    assert national_id_for("ADELI", "751234567") == "0751234567"
    with pytest.raises(InvalidIdentifier, match="unknown identifier type"):
        national_id_for("4", "123")


@pytest.mark.parametrize(("value", "valid"), [("750000010", True), ("750000011", False)])
def test_finess(value: str, valid: bool) -> None:
    if valid:
        assert validate_finess(value) == value
    else:
        with pytest.raises(InvalidIdentifier, match="Luhn"):
            validate_finess(value)


def test_finess_corsica_is_checked_with_department_20() -> None:
    digits = with_luhn("20000001")
    corsican = "2A" + digits[2:]
    assert validate_finess(corsican) == corsican
    wrong = corsican[:-1] + str((int(corsican[-1]) + 1) % 10)
    with pytest.raises(InvalidIdentifier, match="Luhn"):
        validate_finess(wrong)


@pytest.mark.parametrize("value", ["75000001", "7500000100", "ABCDEFGHI", ""])
def test_finess_shape(value: str) -> None:
    with pytest.raises(InvalidIdentifier, match="9 characters"):
        validate_finess(value)


def test_adeli_and_siret() -> None:
    assert validate_adeli("2A1234567") == "2A1234567"
    with pytest.raises(InvalidIdentifier, match="9 characters"):
        validate_adeli("12345")
    assert validate_siret("732 829 320 00074") == "73282932000074"
    with pytest.raises(InvalidIdentifier, match="Luhn"):
        validate_siret("73282932000075")


@pytest.mark.parametrize(
    ("address", "normalised"),
    [
        ("Sophie.Bernard@Demo.MSSante.fr", "sophie.bernard@demo.mssante.fr"),
        ("285037512345688@patient.mssante.fr", "285037512345688@patient.mssante.fr"),
        ("o'brien+tag@a-b.example.fr", "o'brien+tag@a-b.example.fr"),
    ],
)
def test_address_accepts(address: str, normalised: str) -> None:
    assert validate_mailbox_address(address) == normalised


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("", "empty"),
        ("no-at-sign.fr", "exactly one @"),
        ("a@b@c.fr", "exactly one @"),
        ("@domain.fr", "1 to 64"),
        ("x" * 65 + "@domain.fr", "1 to 64"),
        ("a..b@domain.fr", "not allowed"),
        (".a@domain.fr", "not allowed"),
        ("jé@domain.fr", "not allowed"),
        ("a b@domain.fr", "not allowed"),
        ("a@localhost", "not a valid domain"),
        ("a@-bad.fr", "not a valid domain"),
        ("a@" + "x" * 250 + ".fr", "254"),
        ("a@dom_ain.fr", "not a valid domain"),
    ],
)
def test_address_rejects(address: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        validate_mailbox_address(address)
