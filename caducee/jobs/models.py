"""The job runner's one table: one row per job, its next run and its lease."""

from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from caducee.db import Base


class ScheduledJob(Base):
    """A periodic job. Times are seconds since the epoch (compared with each node's clock)."""

    __tablename__ = "jobs_schedule"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_run_at: Mapped[float] = mapped_column(Float, default=0.0)
    lease_until: Mapped[float] = mapped_column(Float, default=0.0)  # a node runs it until then
    holder: Mapped[str] = mapped_column(String(128), default="")  # host:pid of that node's process
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_finished_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_result: Mapped[str] = mapped_column(Text, default="")
