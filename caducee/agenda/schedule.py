"""The prevention table: `prevention.toml` read into rules, checked once when loaded.

The calendar is data, not code: a new vaccination calendar is a new file (with its source
and version), reviewed as a table, and what patients see changes at the next load, with
no migration (their marks are kept by item key). A table that does not make sense (an
unknown field, a span that is not one, an `after` naming no item) is refused whole at
start-up rather than half applied.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from caducee.agenda.spans import Span, SpanError

PACKAGED = Path(__file__).with_name("prevention.toml")
KINDS = {"depistage": "Dépistage", "vaccin": "Vaccination", "examen": "Examen de l'enfant", "bilan": "Bilan de prévention"}
_FIELDS = {"key", "kind", "label", "detail", "sex", "from", "window", "until", "every", "after", "wait", "needs_after", "season"}


class TableError(ValueError):
    """The prevention table cannot be used; the message says which item and why."""


@dataclass(frozen=True)
class Season:
    """A yearly campaign from (month, day) to (month, day), possibly across the new year."""

    start: tuple[int, int]
    end: tuple[int, int]


@dataclass(frozen=True)
class Rule:
    key: str
    kind: str
    label: str
    detail: str
    sex: str  # "F", "M" or "*"
    start: Span  # the age at which it first falls due ("from")
    window: Span | None
    until: Span | None
    every: Span | None
    after: tuple[str, ...]
    wait: Span
    needs_after: bool
    season: Season | None

    def applies_to(self, sex: str) -> bool:
        """Whether a person of this INS sex (M, F, I) is concerned; "I" sees both."""
        return self.sex == "*" or sex not in ("M", "F") or sex == self.sex


@dataclass(frozen=True)
class Table:
    name: str
    version: str
    published: str
    rules: tuple[Rule, ...]

    def rule(self, key: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.key == key), None)


def _span(item: dict[str, object], name: str, key: str) -> Span | None:
    value = item.get(name)
    if value is None:
        return None
    try:
        return Span.parse(str(value))
    except SpanError as exc:
        raise TableError(f"item {key}: {name}: {exc}") from None


def _season(text: str, key: str) -> Season:
    try:
        start, end = text.split("/")
        (sm, sd), (em, ed) = (tuple(int(part) for part in side.split("-")) for side in (start, end))
        if not (1 <= sm <= 12 and 1 <= em <= 12 and 1 <= sd <= 31 and 1 <= ed <= 31):
            raise ValueError
    except ValueError:
        raise TableError(f"item {key}: season must be MM-DD/MM-DD, not {text!r}") from None
    return Season((sm, sd), (em, ed))


def parse_table(text: str) -> Table:
    """A table from TOML text, every item checked."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TableError(f"not TOML: {exc}") from None
    source = data.get("source") or {}
    if not source.get("name") or not source.get("version"):
        raise TableError("the [source] section needs a name and a version")
    rules = []
    for index, item in enumerate(data.get("item") or []):
        key = str(item.get("key") or f"#{index + 1}")
        unknown = set(item) - _FIELDS
        if unknown:
            raise TableError(f"item {key}: unknown field(s) {', '.join(sorted(unknown))}")
        if item.get("kind") not in KINDS:
            raise TableError(f"item {key}: kind must be one of {', '.join(KINDS)}")
        if item.get("sex", "*") not in ("F", "M", "*"):
            raise TableError(f"item {key}: sex must be F, M or *")
        if not item.get("label"):
            raise TableError(f"item {key}: a label is needed")
        rules.append(
            Rule(
                key=key,
                kind=str(item["kind"]),
                label=str(item["label"]),
                detail=str(item.get("detail", "")),
                sex=str(item.get("sex", "*")),
                start=_span(item, "from", key) or Span(),
                window=_span(item, "window", key),
                until=_span(item, "until", key),
                every=_span(item, "every", key),
                after=tuple(str(name) for name in item.get("after", [])),
                wait=_span(item, "wait", key) or Span(),
                needs_after=bool(item.get("needs_after", False)),
                season=_season(str(item["season"]), key) if "season" in item else None,
            )
        )
    keys = [rule.key for rule in rules]
    if len(set(keys)) != len(keys):
        raise TableError("two items have the same key")
    for rule in rules:
        missing = [name for name in rule.after if name not in keys]
        if missing:
            raise TableError(f"item {rule.key}: after names no item: {', '.join(missing)}")
        if rule.needs_after and not rule.after:
            raise TableError(f"item {rule.key}: needs_after without after")
        if rule.season is not None and (rule.every or rule.after or rule.window):
            raise TableError(f"item {rule.key}: a season item recurs by its season only")
    return Table(str(source["name"]), str(source["version"]), str(source.get("published", "")), tuple(rules))


def load_table(path: Path | str | None = None) -> Table:
    """The table at `path` (the packaged one when empty), read again when the file changes.

    One stat per call: a new table reaches the pages and the daily job of a running server
    at their next request, without a restart.
    """
    where = Path(path).resolve() if path else PACKAGED
    return _load(str(where), where.stat().st_mtime_ns)


@cache
def _load(path: str, _mtime: int) -> Table:
    return parse_table(Path(path).read_text(encoding="utf-8"))
