"""iCalendar in and out (RFC 5545, iTIP RFC 5546), with the `icalendar` package and
recurrences expanded by `recurring-ical-events`, every input bounded.

In: the invitation a professional's software sends (METHOD:REQUEST or CANCEL), checked
and reduced to plain values. Out: the patient's answer (METHOD:REPLY), one appointment as
a `.ics` file, and the subscribed feed.

What an invitation may not do: be larger than 256 KB or hold more than 50 events, name
an unknown time zone, fall outside a sane range of dates (a typo of year 9999 included),
or expand into more than 52 occurrences within two years, however its rule is written.

The cost of reading one is bounded before the parser runs, because a rule is walked from
its start: an event that recurs every minute from a year ago is half a million steps, and
a VTIMEZONE whose daylight rule is hourly from 1601 is expanded by the parser itself (a
minute of CPU for one message). So recurrence rules are checked on the raw lines first: an
appointment recurs at most daily (FREQ=DAILY and coarser, a few BYHOUR values, one
BYMINUTE and BYSECOND), a time zone's rules are yearly, as every real one is, and a
calendar has at most `MAX_ZONE_RULES` of them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

import icalendar
import recurring_ical_events

MAX_BYTES = 256 * 1024
MAX_EVENTS = 50
MAX_OCCURRENCES = 52
HORIZON = timedelta(days=2 * 366)  # how far recurrences are expanded
LATEST = timedelta(days=5 * 366)  # an appointment further away than this is a typo
EARLIEST = timedelta(days=366)  # or further in the past
PRODID = "-//Caducee//Agenda sante//FR"
MAX_ZONE_RULES = 20  # STANDARD and DAYLIGHT parts, all VTIMEZONEs together
EVENT_FREQUENCIES = frozenset({"DAILY", "WEEKLY", "MONTHLY", "YEARLY"})
ZONE_FREQUENCIES = frozenset({"YEARLY"})
MAX_BY_VALUES = {"BYHOUR": 4, "BYMINUTE": 1, "BYSECOND": 1}
_FOLD = re.compile(rb"\r?\n[ \t]")


class InvalidCalendar(ValueError):
    """An invitation we do not take: `reason` says why (for the log, never the patient)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Occurrence:
    recurrence_id: str  # "" for a single event; the original start (UTC, ISO) otherwise
    starts_at: datetime  # UTC
    ends_at: datetime | None
    all_day: bool


@dataclass(frozen=True)
class Invitation:
    method: str  # REQUEST / CANCEL
    uid: str
    sequence: int
    dtstamp: datetime | None
    summary: str
    location: str
    organizer: str
    attendees: frozenset[str]
    private: bool  # CLASS:PRIVATE or CONFIDENTIAL
    occurrences: tuple[Occurrence, ...]  # CANCEL: the cancelled ones (all of the UID when `whole`)
    whole: bool = True  # a CANCEL of the whole series (no RECURRENCE-ID)
    truncated: bool = False  # the recurrence had more occurrences than we keep


def _text(value: object, limit: int) -> str:
    text = str(value or "")
    return "".join(ch if ch >= " " or ch == "\n" else " " for ch in text).strip()[:limit]


def _address(value: object) -> str:
    text = str(value or "").strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return text.strip().lower()


def _moment(prop: object, where: tzinfo, what: str) -> tuple[datetime, bool]:
    """(UTC moment, all-day) of a DTSTART-like property; floating times are the patient's."""
    if prop is None:
        raise InvalidCalendar(f"no {what}")
    value = getattr(prop, "dt", None)
    params = getattr(prop, "params", {})
    if isinstance(value, datetime):
        if value.tzinfo is None:
            if params.get("TZID"):
                raise InvalidCalendar(f"{what}: unknown time zone {str(params['TZID'])[:60]!r}")
            value = value.replace(tzinfo=where)
        try:
            return value.astimezone(UTC), False
        except (OverflowError, ValueError):
            raise InvalidCalendar(f"{what} out of range") from None
    if isinstance(value, date):
        try:
            return datetime.combine(value, time(0), tzinfo=where).astimezone(UTC), True
        except (OverflowError, ValueError):
            raise InvalidCalendar(f"{what} out of range") from None
    raise InvalidCalendar(f"{what} is not a date")


def _in_range(moment: datetime, now: datetime) -> None:
    if not (now - EARLIEST <= moment <= now + LATEST):
        raise InvalidCalendar(f"date out of range: {moment:%Y-%m-%d}")


def _end(event: icalendar.Event, starts: datetime, all_day: bool, where: tzinfo) -> datetime | None:
    if event.get("DTEND") is not None:
        ends, _ = _moment(event.get("DTEND"), where, "DTEND")
    elif event.get("DURATION") is not None:
        duration = getattr(event.get("DURATION"), "dt", None)
        if not isinstance(duration, timedelta):
            raise InvalidCalendar("DURATION is not a duration")
        ends = starts + duration
    else:
        return starts + timedelta(days=1) if all_day else None
    if ends < starts or ends - starts > timedelta(days=31):
        raise InvalidCalendar("the event ends before it starts, or lasts more than a month")
    return ends


def check_rules(data: bytes) -> None:
    """Refuse, before any parsing, the recurrence rules whose walk could be long (see the
    module's doc): sub-daily events, non-yearly time zones, too many zone rules."""
    stack: list[bytes] = []
    zone_rules = 0
    for line in _FOLD.sub(b"", data).splitlines():
        name, _, value = line.partition(b":")
        name = name.split(b";", 1)[0].strip().upper()
        if name == b"BEGIN":
            component = value.strip().upper()
            stack.append(component)
            if component in (b"STANDARD", b"DAYLIGHT"):
                zone_rules += 1
                if zone_rules > MAX_ZONE_RULES:
                    raise InvalidCalendar(f"more than {MAX_ZONE_RULES} time-zone rules")
        elif name == b"END":
            if stack:
                stack.pop()
        elif name in (b"RRULE", b"EXRULE"):
            in_zone = bool(stack) and stack[-1] in (b"STANDARD", b"DAYLIGHT")
            parts = dict(item.partition("=")[::2] for item in value.decode("ascii", "replace").upper().split(";"))
            allowed = ZONE_FREQUENCIES if in_zone else EVENT_FREQUENCIES
            if parts.get("FREQ", "").strip() not in allowed:
                where = "a time zone's rule" if in_zone else "an appointment"
                raise InvalidCalendar(f"{where} may not recur with FREQ={parts.get('FREQ', '')[:10] or 'missing'}")
            for key, most in MAX_BY_VALUES.items():
                if key in parts and len(parts[key].split(",")) > most:
                    raise InvalidCalendar(f"{key} with more than {most} values")


def parse_invitation(data: bytes, *, where: tzinfo, now: datetime) -> Invitation:
    """The invitation in a `text/calendar` part, or InvalidCalendar."""
    if len(data) > MAX_BYTES:
        raise InvalidCalendar(f"calendar of {len(data)} bytes (at most {MAX_BYTES})")
    check_rules(data)
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except Exception as exc:  # the parser raises ValueError, KeyError, IndexError... on garbage
        raise InvalidCalendar(f"not iCalendar: {type(exc).__name__}") from None
    if not isinstance(calendar, icalendar.Calendar):
        raise InvalidCalendar("not one VCALENDAR")
    method = str(calendar.get("METHOD", "")).upper()
    if method not in ("REQUEST", "CANCEL"):
        raise InvalidCalendar(f"METHOD {method[:20] or 'missing'} is not an invitation or a cancellation")
    events = list(itertools.islice(calendar.walk("VEVENT"), MAX_EVENTS + 1))
    if not events:
        raise InvalidCalendar("no VEVENT")
    if len(events) > MAX_EVENTS:
        raise InvalidCalendar(f"more than {MAX_EVENTS} VEVENTs")
    uids = {str(event.get("UID", "")).strip() for event in events}
    if len(uids) != 1 or not next(iter(uids)):
        raise InvalidCalendar("events without a UID, or of several UIDs")
    uid = next(iter(uids))[:255]
    master = next((event for event in events if event.get("RECURRENCE-ID") is None), events[0])
    organizer = _address(master.get("ORGANIZER"))
    if "@" not in organizer:
        raise InvalidCalendar("no ORGANIZER address")
    raw_attendees = master.get("ATTENDEE") or []
    attendees = frozenset(_address(a) for a in (raw_attendees if isinstance(raw_attendees, list) else [raw_attendees]))
    try:
        sequence = max(0, min(int(str(master.get("SEQUENCE", 0))), 1_000_000))
    except ValueError:
        raise InvalidCalendar("SEQUENCE is not a number") from None
    stamp = getattr(master.get("DTSTAMP"), "dt", None)
    dtstamp = stamp.astimezone(UTC) if isinstance(stamp, datetime) and stamp.tzinfo is not None else None
    private = str(master.get("CLASS", "PUBLIC")).upper() in ("PRIVATE", "CONFIDENTIAL")
    common = dict(
        method=method,
        uid=uid,
        sequence=sequence,
        dtstamp=dtstamp,
        summary=_text(master.get("SUMMARY"), 200),
        location=_text(master.get("LOCATION"), 300),
        organizer=organizer,
        attendees=attendees,
        private=private,
    )
    if method == "CANCEL":
        cancelled = [event for event in events if event.get("RECURRENCE-ID") is not None]
        if cancelled:
            ids = tuple(_recurrence(event.get("RECURRENCE-ID"), where) for event in cancelled)
            return Invitation(**common, occurrences=tuple(Occurrence(rid, now, None, False) for rid in ids), whole=False)  # type: ignore[arg-type]
        return Invitation(**common, occurrences=(), whole=True)  # type: ignore[arg-type]
    starts, all_day = _moment(master.get("DTSTART"), where, "DTSTART")
    _in_range(starts, now)
    recurring = any(master.get(name) is not None for name in ("RRULE", "RDATE")) or len(events) > 1
    if not recurring:
        return Invitation(**common, occurrences=(Occurrence("", starts, _end(master, starts, all_day, where), all_day),))  # type: ignore[arg-type]
    occurrences, truncated = _expand(calendar, where, now)
    return Invitation(**common, occurrences=tuple(occurrences), truncated=truncated)  # type: ignore[arg-type]


def _recurrence(prop: object, where: tzinfo) -> str:
    moment, _ = _moment(prop, where, "RECURRENCE-ID")
    return moment.strftime("%Y%m%dT%H%M%SZ")


def _expand(calendar: icalendar.Calendar, where: tzinfo, now: datetime) -> tuple[list[Occurrence], bool]:
    """The occurrences from yesterday to the horizon, at most MAX_OCCURRENCES: the rule is
    walked lazily from its start (at most a year ago, at most daily: `check_rules`), so an
    unbounded rule costs a few hundred steps, not forever."""
    start = now - timedelta(days=1)
    try:
        walk = recurring_ical_events.of(calendar).after(start)
        found: list[Occurrence] = []
        truncated = False
        for event in walk:
            starts, all_day = _moment(event.get("DTSTART"), where, "DTSTART")
            if starts > now + HORIZON:
                break
            if len(found) == MAX_OCCURRENCES:
                truncated = True
                break
            original = event.get("RECURRENCE-ID") or event.get("DTSTART")
            if str(event.get("STATUS", "")).upper() == "CANCELLED":
                continue
            found.append(Occurrence(_recurrence(original, where), starts, _end(event, starts, all_day, where), all_day))
    except InvalidCalendar:
        raise
    except Exception as exc:  # a rule the library cannot expand
        raise InvalidCalendar(f"recurrence cannot be expanded: {type(exc).__name__}") from None
    if not found:
        raise InvalidCalendar("the recurrence has no occurrence from now on")
    return found, truncated


# ---- out ---------------------------------------------------------------------------------


def _calendar(method: str | None = None) -> icalendar.Calendar:
    calendar = icalendar.Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    if method:
        calendar.add("method", method)
    return calendar


def reply(
    *,
    uid: str,
    sequence: int,
    organizer: str,
    attendee: str,
    attendee_name: str,
    accepted: bool,
    summary: str,
    starts_at: datetime,
    now: datetime,
) -> bytes:
    """METHOD:REPLY (RFC 5546 3.2.3): the attendee's answer to the whole invitation."""
    calendar = _calendar("REPLY")
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("sequence", sequence)
    event.add("dtstamp", now.astimezone(UTC))
    event.add("dtstart", starts_at.astimezone(UTC))
    event.add("summary", summary or "Rendez-vous")
    event.add("organizer", f"mailto:{organizer}")
    answer = icalendar.vCalAddress(f"mailto:{attendee}")
    answer.params["PARTSTAT"] = icalendar.vText("ACCEPTED" if accepted else "DECLINED")
    answer.params["CN"] = icalendar.vText(attendee_name)
    event.add("attendee", answer, encode=False)
    calendar.add_component(event)
    return calendar.to_ical()


@dataclass(frozen=True)
class Entry:
    """One event of a feed or a download."""

    uid: str
    starts_at: datetime
    ends_at: datetime | None
    all_day: bool
    day: date | None  # all-day: the local date
    summary: str
    location: str = ""
    description: str = ""
    status: str = "CONFIRMED"  # CONFIRMED / TENTATIVE / CANCELLED
    transparent: bool = False


def _event(entry: Entry, now: datetime) -> icalendar.Event:
    event = icalendar.Event()
    event.add("uid", entry.uid)
    event.add("dtstamp", now.astimezone(UTC))
    if entry.all_day and entry.day is not None:
        event.add("dtstart", entry.day)
        event.add("dtend", entry.day + timedelta(days=1))
    else:
        event.add("dtstart", entry.starts_at.astimezone(UTC))
        event.add("dtend", (entry.ends_at or entry.starts_at + timedelta(minutes=30)).astimezone(UTC))
    event.add("summary", entry.summary)
    if entry.location:
        event.add("location", entry.location)
    if entry.description:
        event.add("description", entry.description)
    event.add("status", entry.status)
    event.add("class", "PRIVATE")
    if entry.transparent:
        event.add("transp", "TRANSPARENT")
    return event


def document(entries: list[Entry], *, name: str | None, now: datetime, method: str | None = None) -> bytes:
    """A VCALENDAR of `entries`: the feed (with its name and refresh interval) or a download."""
    calendar = _calendar(method)
    if name:
        calendar.add("name", name)
        calendar.add("x-wr-calname", name)
        calendar.add("refresh-interval", timedelta(hours=1), parameters={"VALUE": "DURATION"})
        calendar.add("x-published-ttl", "PT1H")
    for entry in entries:
        calendar.add_component(_event(entry, now))
    return calendar.to_ical()
