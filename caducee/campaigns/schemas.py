"""The shapes the campaign API answers with, for its OpenAPI description (counts only: the
CNAM never learns which patient received or read what)."""

from __future__ import annotations

from pydantic import BaseModel


class EstimateOut(BaseModel):
    targeted: int
    receiving: int
    skipped: dict[str, int]  # by reason: opposed, closed, unknown, ...


class FileReport(BaseModel):
    rows: int
    problems: int


class Created(BaseModel):
    id: int
    state: str
    estimate: EstimateOut
    file: FileReport | None = None


class ProgressOut(BaseModel):
    id: int
    reference: str
    state: str
    send_at: str | None
    targeted: int
    delivered: int
    skipped: dict[str, int]
    read: int
    recalled: int
    read_before_recall: int
    file: dict[str, int | str | None] | None


class Problem(BaseModel):
    line: int
    problem: str
    detail: str


class StateOut(BaseModel):
    id: int
    state: str
