"""Caducée: a secure health messaging operator (MSSanté model)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("caducee")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"
