"""Validators for the national identifiers and mailbox addresses.

Each validator returns the normalised value or raises `InvalidIdentifier` whose message
says what is wrong in words a person can act on (a wrong key is not "invalid input": it is
"the key should be 42, not 43"). They are pure functions, used by the importers, the APIs
and the gateway alike.
"""

from __future__ import annotations

import re

__all__ = [
    "InvalidIdentifier",
    "luhn_valid",
    "nir_key",
    "validate_ins",
    "validate_rpps",
    "validate_adeli",
    "validate_finess",
    "validate_siret",
    "validate_mailbox_address",
    "national_id_for",
]


class InvalidIdentifier(ValueError):
    """An identifier failed validation; `kind` names the identifier (INS, RPPS, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


_DOUBLE_DIGIT = str.maketrans("0123456789", "0246813579")  # 2*d, minus 9 above 9


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits (0-9), check digit last.

    Written with slices, translate and a sum over bytes so that every loop runs in C (the
    sum of the characters' codes less 48 each is the sum of the digits): the importers
    check two numbers on each of 535,000 rows.
    """
    if not digits.isascii() or not digits.isdigit():
        return False
    reversed_digits = digits[::-1]
    kept = reversed_digits[0::2].encode()
    doubled = reversed_digits[1::2].translate(_DOUBLE_DIGIT).encode()
    return (sum(kept) + sum(doubled) - 48 * len(digits)) % 10 == 0


_INS_SHAPE = re.compile(r"^[1-8][0-9]{4}(?:[0-9]{2}|2[AB])[0-9]{6}[0-9]{2}$")


def nir_key(first_13: str) -> int:
    """The NIR/INS key of 13 characters: 97 - (number mod 97), Corsica 2A -> 19, 2B -> 18."""
    digits = first_13.upper().replace("2A", "19", 1).replace("2B", "18", 1)
    return 97 - (int(digits) % 97)


_INS_PLAIN = re.compile(r"[1-8][0-9]{12}[0-9]{2}").fullmatch  # the common case: 15 digits, nothing to clean


def validate_ins(value: str) -> str:
    """A patient's INS (NIR or NIA, 15 characters with the key), spaces allowed on input.

    Fifteen plain digits with the right key (nearly every row of a 66-million-row
    population file) are checked by one match and one modulo; anything else takes the
    long way, which also explains a refusal."""
    if value and _INS_PLAIN(value) and int(value[13:]) == 97 - int(value[:13]) % 97:
        return value
    ins = re.sub(r"[\s.]", "", value or "").upper()
    if not ins:
        raise InvalidIdentifier("INS", "the number is empty")
    if len(ins) != 15:
        raise InvalidIdentifier("INS", f"an INS has 15 characters (13 + a 2-digit key), this one has {len(ins)}")
    if not _INS_SHAPE.match(ins):
        raise InvalidIdentifier(
            "INS",
            "an INS is made of digits (2A or 2B allowed for a birth in Corsica) and starts with 1 to 8",
        )
    expected = nir_key(ins[:13])
    if int(ins[13:]) != expected:
        raise InvalidIdentifier("INS", f"wrong key: for {ins[:13]} the key is {expected:02d}, not {ins[13:]}")
    return ins


# ASCII digits only: `\d` would also take other scripts' digits, which int() accepts.
_RPPS_SHAPE = re.compile(r"[0-9]{11}")
_NINE_SHAPE = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}")  # ADELI and FINESS
_SIRET_SHAPE = re.compile(r"[0-9]{14}")


def validate_rpps(value: str) -> str:
    """An RPPS number: 11 digits whose Luhn check holds."""
    rpps = (value or "").strip()
    if not _RPPS_SHAPE.fullmatch(rpps):
        raise InvalidIdentifier("RPPS", f"an RPPS number has exactly 11 digits, got {rpps!r}")
    if not luhn_valid(rpps):
        raise InvalidIdentifier("RPPS", f"{rpps} fails the Luhn check (a digit is wrong)")
    return rpps


def validate_adeli(value: str) -> str:
    """An ADELI number: 9 characters, digits (2A/2B department for Corsica)."""
    adeli = (value or "").strip().upper()
    if not _NINE_SHAPE.fullmatch(adeli):
        raise InvalidIdentifier("ADELI", f"an ADELI number has 9 characters, got {adeli!r}")
    return adeli


def validate_finess(value: str) -> str:
    """A FINESS number: 9 characters, the last a Luhn check digit.

    Corsican numbers start with 2A/2B; the key is then computed with the department
    written as its former code 20. This is an assumption of ours, not a published rule:
    if a real Corsican FINESS is refused, this is the place to look.
    """
    finess = (value or "").strip().upper()
    if not _NINE_SHAPE.fullmatch(finess):
        raise InvalidIdentifier("FINESS", f"a FINESS number has 9 characters, got {finess!r}")
    digits = "20" + finess[2:] if finess[:2] in {"2A", "2B"} else finess
    if not luhn_valid(digits):
        raise InvalidIdentifier("FINESS", f"{finess} fails the Luhn check (a digit is wrong)")
    return finess


def validate_siret(value: str) -> str:
    """A SIRET: 14 digits, Luhn over the whole number (La Poste's SIRETs are exempt)."""
    siret = re.sub(r"\s", "", value or "")
    if not _SIRET_SHAPE.fullmatch(siret):
        raise InvalidIdentifier("SIRET", f"a SIRET has 14 digits, got {siret!r}")
    if not luhn_valid(siret) and not siret.startswith("356000000"):
        raise InvalidIdentifier("SIRET", f"{siret} fails the Luhn check (a digit is wrong)")
    return siret


# RFC 5322 dot-atom local part, ASCII only (MSSanté addresses are ASCII); LDH domain labels.
_LOCAL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"^{_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*$")
_DOMAIN_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


_ADDRESS_FAST = re.compile(
    rf"^(?=.{{1,254}}$)(?=[^@]{{1,64}}@){_LOCAL_ATOM}(?:\.{_LOCAL_ATOM})*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)


def validate_mailbox_address(value: str) -> str:
    """A mailbox address `local@domain`, returned lower-cased.

    The local part keeps its case on the wire but we store addresses lower-cased, as the
    national directory does; comparisons everywhere use the normalised form. One regular
    expression accepts the common case; the checks below only run to explain a refusal.
    """
    if value and _ADDRESS_FAST.match(value):
        return value.lower()
    address = (value or "").strip()
    if not address:
        raise InvalidIdentifier("address", "the address is empty")
    if len(address) > 254:
        raise InvalidIdentifier("address", "an address has at most 254 characters")
    if address.count("@") != 1:
        raise InvalidIdentifier("address", f"{address!r} must contain exactly one @")
    local, domain = address.split("@")
    if not local or len(local) > 64:
        raise InvalidIdentifier("address", "the part before @ must have 1 to 64 characters")
    if not _LOCAL_PART.match(local):
        raise InvalidIdentifier("address", f"the part before @ ({local!r}) has a character not allowed in an address")
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise InvalidIdentifier("address", f"{domain!r} is not a valid domain name")
    return f"{local}@{domain}".lower()


def national_id_for(id_type: str, identifier: str) -> str:
    """The national id of a professional: `8` + RPPS, `0` + ADELI (validated)."""
    kind = id_type.strip().upper()
    if kind in {"8", "RPPS"}:
        return "8" + validate_rpps(identifier)
    if kind in {"0", "ADELI"}:
        return "0" + validate_adeli(identifier)
    raise InvalidIdentifier("PP id type", f"unknown identifier type {id_type!r} (expected 0/ADELI or 8/RPPS)")
