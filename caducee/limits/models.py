"""Tables of the limits component.

Times are seconds since the epoch (a float): every node compares them with its own clock,
which NTP keeps within far less than the windows counted here (minutes), and arithmetic on
them is the same in SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from caducee.db import Base


class FailureCounter(Base):
    """Failures of one key (an account, a client address) since `first_at`, and its lock."""

    __tablename__ = "limit_failures"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[float] = mapped_column(Float, default=0.0)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0, index=True)


class WindowClaim(Base):
    """When something was last done for a key (an alert to a patient): at most once per window."""

    __tablename__ = "limit_windows"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    last_at: Mapped[float] = mapped_column(Float, index=True)
