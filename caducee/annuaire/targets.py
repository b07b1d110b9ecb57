"""Patients as sets, for campaigns: the annuaire's side of targeting.

A campaign never reads the annuaire's tables: it asks here for queries (SQLAlchemy
selects it runs inside its own statements) over the patients a criterion or a target file
names. Each row is what the rules read of a recipient (`policies.sets`): its kind (a
patient of ours, or unknown) and its profile status, with the mailbox id the fan-out
files into and the patient id batches are ranged on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import ColumnElement, FromClause, Select, Table, and_, case, exists, false, func, literal, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire.models import Guardianship, Mailbox, MailboxType, Patient


@dataclass(frozen=True)
class Criteria:
    """Who a campaign is for. Every field narrows; none at all is everybody."""

    sex: str | None = None  # M / F / I
    born_from: date | None = None  # birth date on or after
    born_to: date | None = None  # birth date on or before
    statuses: tuple[str, ...] = ()  # profile statuses (created, activated...); empty: any
    with_guardian: bool | None = None  # True: minors whose legal guardian has a profile (the child's profile gets it)


def _conditions(criteria: Criteria) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if criteria.sex:
        conditions.append(Patient.sex == criteria.sex)
    if criteria.born_from:
        conditions.append(Patient.birth_date >= criteria.born_from)
    if criteria.born_to:
        conditions.append(Patient.birth_date <= criteria.born_to)
    if criteria.statuses:
        conditions.append(Patient.status.in_(criteria.statuses))
    if criteria.with_guardian is not None:
        guarded = exists().where(Guardianship.minor_id == Patient.id)
        conditions.append(guarded if criteria.with_guardian else ~guarded)
    return conditions


def facts(criteria: Criteria, targets: Table | None = None, campaign_id: int | None = None) -> Select:
    """(patient_id, mailbox_id, kind, patient_status) of every recipient.

    Without `targets`, the patients matching `criteria`. With `targets` (a table with
    `campaign_id`, `ins`, `patient_id` columns: a campaign's target file), every distinct
    INS of the file, including those naming no profile here (kind "unknown", for the
    `known-recipient` rule), narrowed by `criteria` for the known ones.
    """
    kind = case((and_(Mailbox.id.is_not(None), Mailbox.type == MailboxType.PAT.value), literal("patient")), else_=literal("unknown"))
    columns = (
        Patient.id.label("patient_id"),
        Mailbox.id.label("mailbox_id"),
        kind.label("kind"),
        Patient.status.label("patient_status"),
    )
    conditions = _conditions(criteria)
    if targets is None:
        query = select(*columns).select_from(Patient).outerjoin(Mailbox, Mailbox.patient_id == Patient.id)
        return query.where(*conditions) if conditions else query
    query = (
        select(*columns)
        .select_from(targets)
        .outerjoin(Patient, Patient.id == targets.c.patient_id)
        .outerjoin(Mailbox, Mailbox.patient_id == Patient.id)
        .where(targets.c.campaign_id == campaign_id)
    )
    if conditions:
        query = query.where(or_(Patient.id.is_(None), and_(*conditions)))
    return query


def in_range(query: Select, lo: int, hi: int) -> Select:
    """`query` restricted to patient ids lo <= id < hi (a fan-out batch)."""
    return query.where(Patient.id >= lo, Patient.id < hi)


def among(query: Select, patient_ids: list[int]) -> Select:
    """`query` restricted to the given patient ids (the inboxes a request opens)."""
    return query.where(Patient.id.in_(patient_ids))


def matching(query: Select, values: frozenset[tuple[object, ...]], fields: tuple[str, ...]) -> Select:
    """`query` restricted to rows whose (`fields`) are among `values` (the rules' sets)."""
    if not values:
        return query.where(false())
    column_of = {"kind": query.selected_columns.kind, "patient_status": query.selected_columns.patient_status}
    alternatives = []
    for combination in values:
        parts = []
        for name, value in zip(fields, combination, strict=True):
            column = column_of[name]
            value = getattr(value, "value", value)
            parts.append(column.is_(None) if value is None else column == value)
        alternatives.append(and_(*parts) if parts else true())
    return query.where(or_(*alternatives))


async def id_bounds(conn: AsyncConnection, query: Select) -> tuple[int, int, int]:
    """(lowest patient id, highest, count) of the patients `query` selects."""
    sub = query.where(Patient.id.is_not(None)).subquery()
    row = (await conn.execute(select(func.min(sub.c.patient_id), func.max(sub.c.patient_id), func.count()))).one()
    return int(row[0] or 0), int(row[1] or 0), int(row[2] or 0)


async def last_patient_id(conn: AsyncConnection) -> int:
    """The highest patient id so far: a campaign sent now reaches no profile created later."""
    return int((await conn.execute(select(func.max(Patient.id)))).scalar() or 0)


def by_ins(staging: FromClause) -> Select:
    """(ins, patient_id) for each row of `staging` (anything with an `ins` column); patient_id
    is NULL for an INS that names no profile here."""
    return select(staging.c.ins, Patient.id.label("patient_id")).select_from(staging).outerjoin(Patient, Patient.ins == staging.c.ins)
