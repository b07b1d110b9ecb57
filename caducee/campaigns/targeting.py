"""Who receives a campaign: the criteria or the target file, decided by the policy chain as sets.

The rules are not copied here: `policies.sets.decide_set` asks the chain, once, which
recipient values each rule refuses for a CNAM campaign. Each refusing rule then costs one
query over the whole target set (a count by profile status, for the estimate and the
progress), and the fan-out selects only the values the chain accepts. A patient opposed
or closed never receives it (rule 7, `patient-profile-open`), an INS unknown here is
refused by `known-recipient`; a created profile receives it and sees it at activation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import date

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from caducee.annuaire import targets
from caducee.annuaire.targets import Criteria
from caducee.campaigns.models import CampaignTarget
from caducee.policies import Facts, Message, Party, PartyKind
from caducee.policies.sets import SetDecision, decide_set

# Every campaign recipient is a patient of ours: on our patient domain, not a pharmacy.
KNOWN: dict[str, object] = {"is_local": True, "domain_trusted": True, "is_officine": False}


def set_decision(sender: str) -> SetDecision:
    template = Facts(
        sender=Party(address=sender, kind=PartyKind.CNAM),
        recipient=Party(address="", kind=PartyKind.UNKNOWN),
        message=Message(size=0),
        submission=True,
    )
    return decide_set(template, KNOWN)


def criteria_from_json(text: str) -> Criteria:
    data = json.loads(text or "{}")
    return Criteria(
        sex=data.get("sex"),
        born_from=date.fromisoformat(data["born_from"]) if data.get("born_from") else None,
        born_to=date.fromisoformat(data["born_to"]) if data.get("born_to") else None,
        statuses=tuple(data.get("statuses") or ()),
        with_guardian=data.get("with_guardian"),
    )


def criteria_to_json(criteria: Criteria) -> str:
    data = asdict(criteria)
    for key in ("born_from", "born_to"):
        data[key] = data[key].isoformat() if data[key] else None
    data["statuses"] = list(criteria.statuses)
    return json.dumps({k: v for k, v in data.items() if v not in (None, [], "")}, sort_keys=True)


def age_range(age_min: int | None, age_max: int | None, on: date) -> tuple[date | None, date | None]:
    """Birth dates of people aged `age_min` to `age_max` (inclusive) on `on`."""

    def years_before(years: int) -> date:
        try:
            return on.replace(year=on.year - years)
        except ValueError:  # 29 February
            return on.replace(year=on.year - years, day=28)

    born_to = years_before(age_min) if age_min is not None else None
    born_from = date.fromordinal(years_before(age_max + 1).toordinal() + 1) if age_max is not None else None
    return born_from, born_to


def recipients(criteria: Criteria, *, campaign_id: int | None = None, uses_file: bool = False) -> Select:
    """The facts of every recipient of a campaign (see `annuaire.targets.facts`)."""
    return targets.facts(criteria, CampaignTarget.__table__ if uses_file else None, campaign_id)


def reason_label(rule: str, status: str | None) -> str:
    """What the CNAM is told: opposed, closed, unknown (or the rule's name)."""
    if rule == "known-recipient":
        return "unknown"
    if rule == "patient-profile-open" and status:
        return str(status)
    return rule


@dataclass(frozen=True)
class Estimate:
    targeted: int
    receiving: int
    skipped: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {"targeted": self.targeted, "receiving": self.receiving, "skipped": self.skipped}


async def estimate(conn: AsyncConnection, facts: Select, decision: SetDecision) -> Estimate:
    """How many the campaign reaches, and why the others are left out: one scan of the
    target set, counted by what the rules read of a recipient (kind, profile status), each
    group then given the chain's answer for its values (a handful of groups, whatever the
    set's size: the rules are decided for the set, never for each patient)."""
    sub = facts.subquery()
    rows = await conn.execute(select(sub.c.kind, sub.c.patient_status, func.count()).group_by(sub.c.kind, sub.c.patient_status))
    refused: dict[tuple[object, ...], str] = {}
    for refusal in reversed(decision.refusals):  # the first refusing rule in chain order wins
        for values in refusal.values:
            refused[tuple(getattr(v, "value", v) for v in values)] = refusal.rule
    total = 0
    skipped: dict[str, int] = {}
    for kind, status, count in rows:
        total += int(count)
        found = {"kind": kind, "patient_status": status}
        rule = refused.get(tuple(found[name] for name in decision.fields))
        if rule is not None:
            label = reason_label(rule, status)
            skipped[label] = skipped.get(label, 0) + int(count)
    return Estimate(total, total - sum(skipped.values()), skipped)


def accepted(facts: Select, decision: SetDecision) -> Select:
    """The recipients the chain accepts (what the fan-out files into)."""
    return targets.matching(facts, decision.accepted, decision.fields)
