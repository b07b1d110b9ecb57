"""Calendar spans ("50y", "1y6m", "8d", "2w") and adding them to dates, as ages are counted.

An age is a calendar fact, not a number of days: a child is "2 months" on the same day
of the month two months later, and someone born on 29 February turns a year older on
28 February in a common year. Adding years and months clamps to the month's last day,
then days are added.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

_PART = re.compile(r"(\d{1,3})([ymwd])")


class SpanError(ValueError):
    """A span in the prevention table is not of the form `1y6m`, `8d`, `2w`."""


@dataclass(frozen=True, order=True)
class Span:
    months: int = 0
    days: int = 0

    @classmethod
    def parse(cls, text: str) -> Span:
        text = text.strip()
        parts = _PART.findall(text)
        if not text or "".join(number + unit for number, unit in parts) != text:
            raise SpanError(f"not a span: {text!r} (write e.g. 50y, 1y6m, 2m, 2w, 8d)")
        months = days = 0
        for number, unit in parts:
            value = int(number)
            if unit == "y":
                months += 12 * value
            elif unit == "m":
                months += value
            elif unit == "w":
                days += 7 * value
            else:
                days += value
        return cls(months, days)

    def __str__(self) -> str:
        years, months = divmod(self.months, 12)
        text = (f"{years}y" if years else "") + (f"{months}m" if months else "") + (f"{self.days}d" if self.days else "")
        return text or "0d"


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def add(day: date, span: Span) -> date:
    """`day` plus `span` (months first, clamped to the month's end, then days)."""
    return add_months(day, span.months) + timedelta(days=span.days)


def subtract(day: date, span: Span) -> date:
    return add_months(day - timedelta(days=span.days), -span.months)


def preimage(day: date, span: Span) -> list[date]:
    """Every date `b` with `add(b, span) == day` (several at month ends, none some days).

    The daily reminder job asks "who reaches this age on that day?" this way, from a
    handful of candidates around the exact subtraction, each checked forwards.
    """
    around = subtract(day, span)
    found = []
    for shift in range(-4, 5):
        try:
            candidate = around + timedelta(days=shift)
        except OverflowError:
            continue
        if add(candidate, span) == day:
            found.append(candidate)
    return found
