"""The one clock every component stamps rows with: aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, time-zone aware (SQLite keeps no zone: every stored time is UTC)."""
    return datetime.now(UTC)
