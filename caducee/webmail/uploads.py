"""Checking what a patient uploads: the type from the content itself, a safe file name.

The browser's declared type and the file's extension say nothing reliable; the first
bytes do. Only what a pharmacy or a doctor can open safely is accepted: PDF, PNG, JPEG.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

ACCEPTED = (  # (magic prefix, content type, extension)
    (b"%PDF-", "application/pdf", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
)


class UploadRefused(ValueError):
    """The upload cannot be sent; the message says why, in French, for the person."""


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


def sniff(data: bytes) -> tuple[str, str] | None:
    """(content type, extension) from the first bytes, or None if not an accepted type."""
    for magic, content_type, extension in ACCEPTED:
        if data.startswith(magic):
            return content_type, extension
    return None


_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_filename(name: str | None, extension: str, fallback: str = "document") -> str:
    """A file name with no path, no control or shell characters, no leading dot, and the
    extension of the real type (an "ordonnance.pdf.exe" becomes "ordonnance.pdf.pdf")."""
    # The extension too is ASCII letters and digits: it goes into a Content-Disposition
    # header, where "x.ｈｔｍｌ" (full-width) could not be encoded and gave a 500.
    extension = "".join(ch for ch in extension if ch.isascii() and ch.isalnum())[:8] or "bin"
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    base = _UNSAFE.sub("_", base).strip(" ._-")[:80]
    stem = base.rsplit(".", 1)[0] if "." in base else base
    stem = stem.strip(" ._-") or fallback
    return f"{stem}.{extension}"


def check_upload(filename: str | None, data: bytes, *, max_size: int) -> Upload:
    if not data:
        raise UploadRefused("Le fichier est vide. Choisissez le fichier de votre ordonnance.")
    if len(data) > max_size:
        raise UploadRefused(
            f"Le fichier est trop lourd ({len(data) / 1_048_576:.1f} Mo) : "
            f"la limite est de {max_size / 1_048_576:.0f} Mo. Prenez une photo moins grande ou un PDF."
        )
    found = sniff(data)
    if found is None:
        raise UploadRefused("Ce type de fichier n'est pas accepté. Envoyez un PDF ou une photo (JPEG ou PNG).")
    content_type, extension = found
    return Upload(safe_filename(filename, extension), content_type, data)
