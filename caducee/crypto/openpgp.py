"""OpenPGP for the CNAM's files: the population file and campaign target files arrive
signed by the CNAM and encrypted to the operator; the provisional-code letters go back
encrypted to the CNAM.

GnuPG does the cryptography (Debian's `gnupg`, driven through `python-gnupg`) with a real
keyring in `<data dir>/openpgp` (mode 0700): the operator's key pair, whose passphrase is
derived from the master key and never stored, and the CNAM's public key, whose
fingerprint is the only signer accepted.

Files are streamed: `open_signed` hands the decrypted bytes over in chunks while gpg is
still reading (a 10-million-line file never sits in memory), and only says whether the
signature was good once the stream is exhausted. Callers therefore stage what they read
and apply nothing before `verdict()` returned: an unsigned file, a file signed by another
key or a tampered file is refused with nothing changed.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK_QUEUE = 64  # chunks of 16 KB waiting for the reader at most: gpg waits when it is full
CNAM_FINGERPRINT_FILE = "cnam-fingerprint"


class OpenPgpError(ValueError):
    """A file that must not be used (unsigned, wrong signer, tampered, not for us); the message says why."""


def openpgp_passphrase(master_key: bytes) -> str:
    """The operator's OpenPGP key passphrase, derived from the master key (never stored)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"caducee openpgp operator key").derive(master_key).hex()


def normalise_fingerprint(value: str) -> str:
    return "".join(value.split()).upper()


@dataclass(frozen=True)
class Verdict:
    signer: str  # fingerprint of the primary key that signed
    plaintext_bytes: int


class _CountingReader:
    """The encrypted file as gpg reads it, counted for the progress bar."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None] | None) -> None:
        self.handle = handle
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if data and self.progress is not None:
            self.progress(len(data))
        return data


class SignedStream:
    """The decrypted content of one file, in chunks, then the signature's verdict."""

    def __init__(self, keyring: Keyring, path: Path, signer: str, progress: Callable[[int], None] | None) -> None:
        self._keyring = keyring
        self._path = path
        self._signer = normalise_fingerprint(signer)
        self._progress = progress
        self._chunks: queue.Queue[bytes | None] = queue.Queue(CHUNK_QUEUE)
        self._stopped = threading.Event()
        self._result: object = None
        self._error: BaseException | None = None
        self._bytes = 0
        self._thread = threading.Thread(target=self._run, name="gpg-decrypt", daemon=True)
        self._thread.start()

    def _on_data(self, data: bytes) -> bool:
        while data and not self._stopped.is_set():
            try:
                self._chunks.put(data, timeout=0.2)
                break
            except queue.Full:
                continue
        return False  # never buffered by python-gnupg: memory stays flat

    def _run(self) -> None:
        try:
            gpg = self._keyring.gpg()
            gpg.on_data = self._on_data
            with open(self._path, "rb") as handle:
                self._result = gpg.decrypt_file(
                    _CountingReader(handle, self._progress), passphrase=self._keyring.passphrase, extra_args=["--pinentry-mode", "loopback"]
                )
        except BaseException as exc:  # reported by verdict()
            self._error = exc
        finally:
            while not self._stopped.is_set():
                try:
                    self._chunks.put(None, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def chunks(self) -> Iterator[bytes]:
        """The decrypted bytes as gpg produces them (not yet vouched for: see `verdict`)."""
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                return
            self._bytes += len(chunk)
            yield chunk

    def lines(self) -> Iterator[bytes]:
        """The decrypted content split into lines (each with its end of line)."""
        rest = b""
        for chunk in self.chunks():
            data = rest + chunk
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                yield data[start : end + 1]
                start = end + 1
            rest = data[start:]
        if rest:
            yield rest

    def close(self) -> None:
        """Stop reading (an early end): gpg is let go and its output dropped."""
        self._stopped.set()
        while True:
            try:
                self._chunks.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)

    def verdict(self) -> Verdict:
        """After the last chunk: the signer, or OpenPgpError saying why the file is refused."""
        self._thread.join()
        if isinstance(self._error, BrokenPipeError):  # gpg gave up half way: a damaged or altered file
            raise OpenPgpError("the file cannot be decrypted: it is damaged or was altered")
        if self._error is not None:
            raise OpenPgpError(f"gpg could not read the file: {self._error}")
        result = self._result
        status = getattr(result, "status", "") or ""
        stderr = getattr(result, "stderr", "") or ""
        if not getattr(result, "ok", False):
            if "no secret key" in status:
                raise OpenPgpError("the file is not encrypted to the operator's key")
            if "no data" in status or not stderr.strip():
                raise OpenPgpError("the file is not an OpenPGP encrypted file")
            raise OpenPgpError(f"the file cannot be decrypted ({status or 'damaged'}): it may have been altered")
        if "BADSIG" in stderr or "DECRYPTION_FAILED" in stderr or "BADMDC" in stderr:
            raise OpenPgpError("the signature does not match the content: the file was altered")
        if not getattr(result, "valid", False):
            if getattr(result, "key_id", None) and "NO_PUBKEY" in stderr:
                raise OpenPgpError("the file is signed by a key that is not the CNAM's")
            raise OpenPgpError("the file is not signed (a CNAM file must be signed with its key)")
        signer = normalise_fingerprint(getattr(result, "pubkey_fingerprint", None) or getattr(result, "fingerprint", "") or "")
        if signer != self._signer and normalise_fingerprint(getattr(result, "fingerprint", "") or "") != self._signer:
            raise OpenPgpError(f"the file is signed by {signer}, not by the CNAM's key {self._signer}")
        return Verdict(signer, self._bytes)


def agent_running(home: Path) -> bool:
    """Whether a gpg-agent already serves this home (asked without starting one)."""
    if not Path(home).is_dir():
        return False
    try:
        asked = subprocess.run(
            ["gpg-connect-agent", "--homedir", str(home), "--no-autostart", "/bye"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return asked.returncode == 0 and b"no gpg-agent running" not in asked.stderr


def stop_agent(home: Path) -> None:
    """End the gpg-agent that gpg started for this home, if one runs.

    gpg starts an agent on first use and the agent outlives the process that used the keyring
    (it is reparented to PID 1): whoever used a keyring ends it when done, so that a stopped
    server, a finished command or a finished test run leaves no process behind. Nothing is
    started when none runs (gpgconf's kill does not autostart)."""
    if not Path(home).is_dir():
        return
    try:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):  # no gpgconf, or it hung: nothing more to do here
        pass


class Keyring:
    """The operator's GnuPG home: its own key pair and the CNAM's public key."""

    def __init__(self, home: Path, passphrase: str) -> None:
        self.home = Path(home)
        self.passphrase = passphrase
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)

    def gpg(self):  # type: ignore[no-untyped-def]
        import gnupg

        return gnupg.GPG(gnupghome=str(self.home))

    # ---- keys -------------------------------------------------------------------------

    def operator_fingerprint(self) -> str | None:
        keys = self.gpg().list_keys(secret=True)
        return normalise_fingerprint(keys[0]["fingerprint"]) if keys else None

    def ensure_operator_key(self, identity: str) -> str:
        """The operator's key pair (Ed25519 signing, Curve25519 encryption), created once."""
        existing = self.operator_fingerprint()
        if existing:
            return existing
        gpg = self.gpg()
        request = gpg.gen_key_input(
            key_type="EDDSA",
            key_curve="ed25519",
            key_usage="sign",
            subkey_type="ECDH",
            subkey_curve="cv25519",
            subkey_usage="encrypt",
            name_real=identity,
            name_email=identity if "@" in identity else None,
            expire_date=0,
            passphrase=self.passphrase,
        )
        created = gpg.gen_key(request)
        if not created.fingerprint:
            raise OpenPgpError(f"gpg could not create the operator key: {created.stderr[-500:]}")
        return normalise_fingerprint(created.fingerprint)

    def export_public(self, fingerprint: str) -> str:
        return str(self.gpg().export_keys(fingerprint))

    def import_public(self, armored: str | bytes) -> list[str]:
        """Import public keys; their fingerprints."""
        result = self.gpg().import_keys(armored)
        return [normalise_fingerprint(fpr) for fpr in result.fingerprints]

    def cnam_fingerprint(self, configured: str = "") -> str:
        """The CNAM's key: the setting when given, else the one `import_cnam` recorded."""
        if configured:
            return normalise_fingerprint(configured)
        path = self.home / CNAM_FINGERPRINT_FILE
        if not path.exists():
            raise OpenPgpError("no CNAM key: run `caducee openpgp import-cnam KEYFILE` first")
        return normalise_fingerprint(path.read_text())

    def import_cnam(self, armored: str | bytes) -> str:
        """Import the CNAM's public key and record it as the one signer of CNAM files."""
        fingerprints = self.import_public(armored)
        if len(set(fingerprints)) != 1:
            raise OpenPgpError(f"expected one public key, found {len(set(fingerprints))}")
        (self.home / CNAM_FINGERPRINT_FILE).write_text(fingerprints[0] + "\n")
        return fingerprints[0]

    # ---- files ------------------------------------------------------------------------

    def open_signed(self, path: Path, signer: str, progress: Callable[[int], None] | None = None) -> SignedStream:
        """Start decrypting `path`; read `lines()` or `chunks()`, then call `verdict()`."""
        return SignedStream(self, Path(path), signer, progress)

    def encrypt_to(self, source: BinaryIO, recipient: str, output: Path, *, sign: bool = True) -> None:
        """Encrypt (and sign with the operator's key) what `source` yields into `output`.

        `source` may be the read end of a pipe the caller writes into: gpg reads it in a
        thread, so the letters of a 66-million-row import are streamed, never held.
        """
        gpg = self.gpg()
        signer = self.operator_fingerprint() if sign else None
        result = gpg.encrypt_file(
            source,
            [recipient],
            sign=signer,
            passphrase=self.passphrase if sign else None,
            always_trust=True,
            armor=False,
            output=str(output),
            extra_args=["--pinentry-mode", "loopback"],
        )
        if not result.ok:
            raise OpenPgpError(f"gpg could not encrypt to {recipient}: {result.status}")


class SignedFile:
    """A CNAM file as an importer reads it: decrypted lines, then `finish()` checks the signature."""

    def __init__(self, keyring: Keyring, path: Path, signer: str) -> None:
        self.keyring = keyring
        self.path = Path(path)
        self.signer = signer
        self.name = self.path.name
        self.size = self.path.stat().st_size
        self.verdict: Verdict | None = None
        self._stream: SignedStream | None = None

    def lines(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        self._stream = self.keyring.open_signed(self.path, self.signer, progress)
        try:
            yield from self._stream.lines()
        except GeneratorExit:
            self._stream.close()
            raise

    def finish(self) -> None:
        """Raise OpenPgpError unless the whole file was read and its signature is the CNAM's."""
        if self._stream is None:
            raise OpenPgpError("the file was not read")
        self.verdict = self._stream.verdict()


class LetterWriter:
    """Bytes written here end up encrypted to `recipient` (signed by the operator) in `output`.

    A pipe feeds gpg, which runs in a thread: the letters of a national import are
    streamed to disk encrypted, never held in memory nor written in clear.
    """

    def __init__(self, keyring: Keyring, recipient: str, output: Path) -> None:
        self._read, self._write = os.pipe()
        self._error: BaseException | None = None
        output.parent.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            try:
                with os.fdopen(self._read, "rb") as source:
                    keyring.encrypt_to(source, recipient, output)
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, name="gpg-encrypt", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._write, view)
            view = view[written:]

    def close(self) -> None:
        os.close(self._write)
        self._thread.join()
        if self._error is not None:
            raise OpenPgpError(f"the letters could not be encrypted: {self._error}")


def keyring_from_settings(settings) -> Keyring:  # type: ignore[no-untyped-def]
    """The data directory's keyring (`<data dir>/openpgp`)."""
    from caducee.crypto.atrest import load_master_key

    return Keyring(Path(settings.data_dir) / "openpgp", openpgp_passphrase(load_master_key(settings.data_dir)))
