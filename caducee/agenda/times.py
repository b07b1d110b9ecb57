"""Time zones of France and how the agenda writes dates in French.

Appointments are stored in UTC and shown in the patient's zone: mainland France and
Corsica are on Europe/Paris, but a patient in Réunion or Guadeloupe lives hours away
from it, and an appointment typed "10:00" there means 10:00 there.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ZONES = {
    "Europe/Paris": "France métropolitaine et Corse",
    "America/Guadeloupe": "Guadeloupe",
    "America/Martinique": "Martinique",
    "America/Cayenne": "Guyane",
    "Indian/Reunion": "La Réunion",
    "Indian/Mayotte": "Mayotte",
    "America/Miquelon": "Saint-Pierre-et-Miquelon",
    "America/St_Barthelemy": "Saint-Barthélemy",
    "America/Marigot": "Saint-Martin",
    "Pacific/Noumea": "Nouvelle-Calédonie",
    "Pacific/Tahiti": "Polynésie française (Tahiti)",
    "Pacific/Wallis": "Wallis-et-Futuna",
}
DEFAULT_ZONE = "Europe/Paris"
MONTHS = ["janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre", "novembre", "décembre"]
WEEKDAYS = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]


def zone(name: str | None) -> tzinfo:
    """The zone a patient chose (Europe/Paris by default, or UTC on a system without tzdata)."""
    try:
        return ZoneInfo(name if name in ZONES else DEFAULT_ZONE)
    except ZoneInfoNotFoundError:
        return UTC


def aware(moment: datetime) -> datetime:
    """A stored time (SQLite returns them naive, in UTC) as an aware UTC time."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def local(moment: datetime, where: tzinfo) -> datetime:
    return aware(moment).astimezone(where)


def at_local(day: date, clock: time, where: tzinfo) -> datetime:
    """The UTC moment of a wall-clock time on a day in a zone."""
    return datetime.combine(day, clock, tzinfo=where).astimezone(UTC)


def french_day(day: date) -> str:
    """« mardi 10 mars 2026 »."""
    return f"{WEEKDAYS[day.weekday()]} {day.day}{'er' if day.day == 1 else ''} {MONTHS[day.month - 1]} {day.year}"


def french_clock(moment: datetime) -> str:
    """« 9 h 30 », « 14 h »."""
    return f"{moment.hour} h {moment.minute:02d}" if moment.minute else f"{moment.hour} h"


def french_month(year: int, month: int) -> str:
    return f"{MONTHS[month - 1]} {year}"
