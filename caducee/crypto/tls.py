"""TLS contexts of the listeners and of the relay client: TLS 1.2 at least, everywhere."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Protocol


class CertAndKey(Protocol):
    @property
    def cert(self) -> Path: ...

    @property
    def key(self) -> Path: ...


def server_context(pair: CertAndKey, *, client_ca: Path | None = None, password: bytes | None = None) -> ssl.SSLContext:
    """A server context; with `client_ca`, a client certificate chaining to it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(pair.cert, pair.key, password=password)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca))
    return context


def reload(contexts: list[tuple[ssl.SSLContext, CertAndKey, Path | None]], password: bytes | None = None) -> None:
    """SIGHUP: load the certificate files again into the contexts in use, so a renewed
    certificate (or new trust anchors) applies to the next connections without a restart.
    A file that does not load raises, and the contexts keep what they had."""
    for context, pair, anchors in contexts:
        context.load_cert_chain(pair.cert, pair.key, password=password)
        if anchors is not None:
            context.load_verify_locations(cafile=str(anchors))


def client_context(ca: Path, pair: CertAndKey | None = None, *, password: bytes | None = None) -> ssl.SSLContext:
    """A client context trusting `ca` (and only it), presenting `pair` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key, password=password)
    return context
