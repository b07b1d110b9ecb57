"""OpenPGP keys and files for tests: a CNAM of their own (another GnuPG home) that signs and
encrypts to the operator's keyring, as the real CNAM would, plus the ways a file goes wrong."""

from __future__ import annotations

from pathlib import Path

from caducee.crypto.openpgp import Keyring


class FakeCnam:
    """A second keyring playing the CNAM: its own key pair, the operator's public key."""

    def __init__(self, home: Path, operator: Keyring, name: str = "CNAM test <cnam@example.org>") -> None:
        self.keyring = Keyring(home, "cnam-test-passphrase")
        self.fingerprint = self.keyring.ensure_operator_key(name)
        self.operator_fpr = operator.operator_fingerprint() or ""
        self.keyring.import_public(operator.export_public(self.operator_fpr))

    def public_key(self) -> str:
        return self.keyring.export_public(self.fingerprint)

    def seal(self, plain: bytes, output: Path, *, sign: bool = True) -> Path:
        """`plain` signed by this CNAM (unless not `sign`) and encrypted to the operator."""
        gpg = self.keyring.gpg()
        result = gpg.encrypt(
            plain,
            [self.operator_fpr],
            sign=self.fingerprint if sign else None,
            passphrase=self.keyring.passphrase if sign else None,
            always_trust=True,
            armor=False,
            extra_args=["--pinentry-mode", "loopback"],
        )
        assert result.ok, result.stderr
        output.write_bytes(result.data)
        return output


def tamper(path: Path) -> Path:
    """Flip one byte in the middle of an encrypted file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    out = path.with_name(path.stem + "-tampered" + path.suffix)
    out.write_bytes(bytes(data))
    return out


def make_template(directory: Path) -> Path:
    """A data directory holding a master key and an operator keyring, with a CNAM (its key
    recorded as the one signer) and another signer beside it: made once per test run (gpg's
    agent and key generation take seconds), copied for each test."""
    from caducee.config import Settings
    from caducee.crypto.openpgp import keyring_from_settings

    data = directory / "var"
    operator = keyring_from_settings(Settings(data_dir=data))
    operator.ensure_operator_key("Caducée test <postmaster@demo.mssante.fr>")
    cnam = FakeCnam(directory / "cnam", operator)
    other = FakeCnam(directory / "other", operator, "Someone else <other@example.org>")
    operator.import_cnam(cnam.public_key())
    operator.import_public(other.public_key())
    return directory


def copy_template(template: Path, data_dir: Path, where: Path) -> tuple[FakeCnam, FakeCnam]:
    """The template's files into `data_dir` (before anything creates a master key there) and
    the two signers, copied to `where`."""
    import shutil

    from caducee.config import Settings
    from caducee.crypto.openpgp import Keyring, keyring_from_settings

    ignore = shutil.ignore_patterns("S.*", "*.lock", ".#*", "random_seed")
    shutil.copytree(template / "var", data_dir, dirs_exist_ok=True, ignore=ignore)
    signers = []
    for name in ("cnam", "other"):
        shutil.copytree(template / name, where / name, ignore=ignore)
        signer = FakeCnam.__new__(FakeCnam)
        signer.keyring = Keyring(where / name, "cnam-test-passphrase")
        signer.fingerprint = signer.keyring.operator_fingerprint() or ""
        signer.operator_fpr = keyring_from_settings(Settings(data_dir=data_dir)).operator_fingerprint() or ""
        signers.append(signer)
    return signers[0], signers[1]
