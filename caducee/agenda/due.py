"""What is due: pure functions from (birth date, sex, what was done, a day) to the
recommended examinations and vaccinations, each with its window.

No I/O and no clock: the pages, the feed and the daily reminder job all call these with
the facts they read, and `tests/test_agenda_due.py` is the table of cases.

For each rule of the table:
- not for this sex: not listed; marked not applicable: listed as such (it can be undone);
- done and not recurring: done; done and recurring (`every`): next due `every` after the
  last time; following other items (`after`): due `wait` after the last of them, never
  before its age; `needs_after`: only once one of them was done;
- a yearly campaign (`season`): due during each campaign for whoever is old enough when it
  opens, unless done since it opened;
- then, against the day: before the due date "à venir", within `window` "à faire", past
  it "en retard", and from the age `until` on no longer recommended (not listed).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from caducee.agenda.schedule import Rule, Season, Table
from caducee.agenda.spans import Span, add, preimage


class State(str, enum.Enum):
    UPCOMING = "upcoming"  # à venir
    DUE = "due"  # à faire maintenant
    OVERDUE = "overdue"  # en retard
    DONE = "done"  # fait (and nothing more is due)
    NOT_APPLICABLE = "not_applicable"  # marked "ne me concerne pas"


@dataclass(frozen=True)
class History:
    """What the person marked: the dates each item was done, and the items not applicable."""

    done: Mapping[str, tuple[date, ...]]
    not_applicable: frozenset[str] = frozenset()

    @classmethod
    def empty(cls) -> History:
        return cls({}, frozenset())

    @classmethod
    def of(cls, marks: Iterable[tuple[str, date | None]]) -> History:
        """From (item key, date done) rows; a row without a date marks "not applicable"."""
        done: dict[str, list[date]] = {}
        not_applicable = set()
        for key, when in marks:
            if when is None:
                not_applicable.add(key)
            else:
                done.setdefault(key, []).append(when)
        return cls({key: tuple(sorted(days)) for key, days in done.items()}, frozenset(not_applicable))

    def last(self, key: str) -> date | None:
        days = self.done.get(key)
        return days[-1] if days else None


@dataclass(frozen=True)
class DueItem:
    rule: Rule
    state: State
    due_from: date | None  # when it falls (fell) due; None when done or not applicable
    due_until: date | None  # end of the "à faire" window (None: due until done)
    ends: date | None  # from this day on it is no longer recommended
    last_done: date | None

    @property
    def key(self) -> str:
        return self.rule.key


def _season_around(season: Season, day: date) -> tuple[date, date]:
    """The campaign that is running on `day`, else the next one: [opens, closes]."""
    for year in (day.year - 1, day.year):
        opens = _on(year, season.start)
        closes = _on(year + (1 if season.end < season.start else 0), season.end)
        if opens <= day <= closes:
            return opens, closes
    opens = _on(day.year, season.start)
    if opens < day:
        opens = _on(day.year + 1, season.start)
    return opens, _on(opens.year + (1 if season.end < season.start else 0), season.end)


def _on(year: int, month_day: tuple[int, int]) -> date:
    month, day = month_day
    while True:
        try:
            return date(year, month, day)
        except ValueError:  # 29 February in a common year
            day -= 1


def _closing(season: Season, opens: date) -> date:
    return _on(opens.year + (1 if season.end < season.start else 0), season.end)


def _seasonal(rule: Rule, born: date, history: History, today: date) -> DueItem | None:
    """A yearly campaign: due while one runs, for whoever is old enough when it opens."""
    assert rule.season is not None
    opens, closes = _season_around(rule.season, today)
    old_enough = add(born, rule.start)
    too_old = add(born, rule.until) if rule.until is not None else None
    last = history.last(rule.key)
    if old_enough > opens:  # too young for this campaign: the first they will be old enough for
        first = _on(old_enough.year, rule.season.start)
        if first < old_enough:
            first = _on(old_enough.year + 1, rule.season.start)
        if too_old is not None and too_old <= first:
            return None
        return DueItem(rule, State.UPCOMING, first, _closing(rule.season, first), too_old, last)
    if too_old is not None and too_old <= opens:
        return None
    if last is not None and opens <= last <= closes:
        return DueItem(rule, State.DONE, None, None, too_old, last)
    return DueItem(rule, State.UPCOMING if today < opens else State.DUE, opens, closes, too_old, last)


def evaluate_rule(rule: Rule, born: date, sex: str, history: History, today: date) -> DueItem | None:
    """One rule for one person on `today`; None when it is not listed for them."""
    if not rule.applies_to(sex):
        return None
    last = history.last(rule.key)
    if rule.key in history.not_applicable:
        return DueItem(rule, State.NOT_APPLICABLE, None, None, None, last)
    if rule.season is not None:
        return _seasonal(rule, born, history, today)
    ends = add(born, rule.until) if rule.until is not None else None
    if last is not None and rule.every is None:
        return DueItem(rule, State.DONE, None, None, ends, last)
    if last is not None:
        assert rule.every is not None
        due_from = add(last, rule.every)
    else:
        due_from = add(born, rule.start)
        if rule.after:
            before = [day for day in (history.last(key) for key in rule.after) if day is not None]
            if before:
                due_from = max(due_from, add(max(before), rule.wait))
            elif rule.needs_after:
                return None
    if ends is not None and due_from >= ends:
        return DueItem(rule, State.DONE, None, None, ends, last) if last is not None else None
    due_until = add(due_from, rule.window) if rule.window is not None else ends
    if ends is not None and due_until is not None:
        due_until = min(due_until, ends)
    if today < due_from:
        state = State.UPCOMING
    elif due_until is None or today < due_until:
        state = State.DUE
    elif ends is None or today < ends:
        state = State.OVERDUE
    else:
        return DueItem(rule, State.DONE, None, None, ends, last) if last is not None else None
    return DueItem(rule, state, due_from, due_until, ends, last)


def evaluate(table: Table, born: date, sex: str, history: History, today: date) -> list[DueItem]:
    """Every item listed for this person on `today`, in the table's order."""
    found = (evaluate_rule(rule, born, sex, history, today) for rule in table.rules)
    return [item for item in found if item is not None]


def falling_due(table: Table, born: date, sex: str, history: History, day: date) -> list[DueItem]:
    """The items that fall due exactly on `day` (what a reminder is about)."""
    return [item for item in evaluate(table, born, sex, history, day) if item.state is State.DUE and item.due_from == day]


@dataclass(frozen=True)
class Candidates:
    """Who may have something falling due on one day: those born on one of `born_on`, or,
    when a campaign opens that day, by `born_by`; and those with a mark whose date makes a
    recurring or following item fall due that day (`marked_on`, by item key).

    The daily job checks each patient against this (set look-ups) and evaluates the rules
    only for candidates, so that a million patients cost a million look-ups, not fifty
    million rule evaluations. It is a superset: a candidate may have nothing due.
    """

    born_on: frozenset[date]
    born_by: date | None
    marked_on: Mapping[str, frozenset[date]]

    def __contains__(self, born: date) -> bool:
        return born in self.born_on or (self.born_by is not None and born <= self.born_by)

    def worth_evaluating(self, born: date, marks: Iterable[tuple[str, date | None]]) -> bool:
        if born in self:
            return True
        return any(when is not None and when in self.marked_on.get(key, ()) for key, when in marks)


def candidates(table: Table, day: date) -> Candidates:
    """The birth dates and mark dates for which some item may fall due on `day`."""
    born_on: set[date] = set()
    born_by: date | None = None
    marked_on: dict[str, set[date]] = {}
    for rule in table.rules:
        if rule.season is not None:
            if day == _on(day.year, rule.season.start):
                limit = _minus(day, rule.start)
                born_by = limit if born_by is None or limit > born_by else born_by
            continue
        born_on.update(preimage(day, rule.start))
        if rule.every is not None:
            marked_on.setdefault(rule.key, set()).update(preimage(day, rule.every))
        for before in rule.after:
            marked_on.setdefault(before, set()).update(preimage(day, rule.wait))
    return Candidates(frozenset(born_on), born_by, {key: frozenset(days) for key, days in marked_on.items()})


def _minus(day: date, span: Span) -> date:
    """The latest birth date that is `span` old on `day`."""
    found = preimage(day, span)
    if found:
        return max(found)
    probe = day
    while add(probe, span) > day:
        probe -= timedelta(days=1)
    return probe
