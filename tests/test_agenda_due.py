"""The table of cases of the prevention calendar: (age, sex, history) -> what is due.

Each row names the rule of the issue it shows. Ages are written as the person's birth
date against a fixed "today"; `expect` maps item keys to their state (None: not listed)
and, where the date matters, to (state, due_from).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from caducee.agenda.due import History, State, candidates, evaluate, falling_due
from caducee.agenda.schedule import TableError, load_table, parse_table
from caducee.agenda.spans import Span, add, preimage

TABLE = load_table()
TODAY = date(2026, 3, 10)
U, D, O, F, NA = State.UPCOMING, State.DUE, State.OVERDUE, State.DONE, State.NOT_APPLICABLE  # noqa: E741 - one letter per state keeps the table readable


def born(years: int = 0, months: int = 0, days: int = 0, today: date = TODAY) -> date:
    """The birth date of someone exactly this old on `today`."""
    return add(today, Span(-(12 * years + months), 0)) - __import__("datetime").timedelta(days=days)


def marks(**done: str | None) -> History:
    """marks(**{"depistage-sein": "2025-01-05"}); None marks "not applicable"."""
    return History.of((key, date.fromisoformat(value) if value else None) for key, value in done.items())


CASES = [
    # ---- breast screening: women 50-74, every 2 years
    ("breast: woman of 49 -> upcoming at 50", born(49), "F", {}, TODAY, {"depistage-sein": (U, add(born(49), Span(600)))}),
    ("breast: woman of 50, never done -> due", born(50, 1), "F", {}, TODAY, {"depistage-sein": D}),
    ("breast: woman of 52, never done -> overdue", born(52), "F", {}, TODAY, {"depistage-sein": O}),
    (
        "breast: done a year ago -> next in a year",
        born(55),
        "F",
        {"depistage-sein": "2025-03-10"},
        TODAY,
        {"depistage-sein": (U, date(2027, 3, 10))},
    ),
    ("breast: done 2 years ago -> due again", born(55), "F", {"depistage-sein": "2024-03-01"}, TODAY, {"depistage-sein": D}),
    ("breast: man of 55 -> not listed", born(55), "M", {}, TODAY, {"depistage-sein": None}),
    ("breast: woman of 75 -> no longer", born(75), "F", {}, TODAY, {"depistage-sein": None}),
    ("breast: last at 74, next would be 76 -> done", born(74, 6), "F", {"depistage-sein": "2026-01-10"}, TODAY, {"depistage-sein": F}),
    ("breast: sex I sees the women's items", born(55), "I", {}, TODAY, {"depistage-sein": O, "depistage-colorectal": O}),
    # ---- colorectal: men and women 50-74, every 2 years
    ("colorectal: man of 50 -> due", born(50), "M", {}, TODAY, {"depistage-colorectal": D}),
    (
        "colorectal: woman of 60 done last year -> upcoming",
        born(60),
        "F",
        {"depistage-colorectal": "2025-06-01"},
        TODAY,
        {"depistage-colorectal": (U, date(2027, 6, 1))},
    ),
    ("colorectal: man of 76 -> no longer", born(76), "M", {}, TODAY, {"depistage-colorectal": None}),
    # ---- cervical: 25-29 two cytologies a year apart then 3 years; 30-65 HPV 3 years after the last, then every 5
    (
        "cervix: woman of 25 -> 1st cytology due, 2nd not listed",
        born(25),
        "F",
        {},
        TODAY,
        {"col-cytologie-1": D, "col-cytologie-2": None, "col-test-hpv": U},
    ),
    ("cervix: man of 25 -> none", born(25), "M", {}, TODAY, {"col-cytologie-1": None, "col-test-hpv": None}),
    (
        "cervix: 1st done -> 2nd one year later",
        born(26),
        "F",
        {"col-cytologie-1": "2025-09-01"},
        TODAY,
        {"col-cytologie-1": F, "col-cytologie-2": (U, date(2026, 9, 1))},
    ),
    (
        "cervix: 2nd done -> 3rd three years later",
        born(27),
        "F",
        {"col-cytologie-1": "2024-01-10", "col-cytologie-2": "2025-01-10"},
        TODAY,
        {"col-cytologie-3": (U, date(2028, 1, 10))},
    ),
    (
        "cervix: 3rd would fall after 30 -> HPV 3 years after the last cytology",
        born(28),
        "F",
        {"col-cytologie-1": "2024-09-01", "col-cytologie-2": "2025-09-01"},
        TODAY,
        {"col-cytologie-3": None, "col-test-hpv": (U, date(2028, 9, 1))},
    ),
    (
        "cervix: woman of 32, last cytology at 28 -> HPV at 31, overdue",
        born(32),
        "F",
        {"col-cytologie-3": "2022-03-01"},
        TODAY,
        {"col-test-hpv": (O, date(2025, 3, 1))},
    ),
    ("cervix: woman of 30 never screened -> HPV due at 30", born(30), "F", {}, TODAY, {"col-cytologie-1": None, "col-test-hpv": D}),
    ("cervix: HPV done -> every 5 years", born(40), "F", {"col-test-hpv": "2023-05-02"}, TODAY, {"col-test-hpv": (U, date(2028, 5, 2))}),
    ("cervix: woman of 66 -> no longer", born(66), "F", {}, TODAY, {"col-test-hpv": None}),
    # ---- Mon bilan prévention: once in 18-25, 45-50, 60-65, 70-75
    ("bilan: 17 -> upcoming", born(17), "M", {}, TODAY, {"bilan-18-25": U}),
    ("bilan: 18 -> due", born(18), "F", {}, TODAY, {"bilan-18-25": D}),
    ("bilan: 25 and 11 months -> still due, never late", born(25, 11), "M", {}, TODAY, {"bilan-18-25": D}),
    ("bilan: 26 -> the band is over", born(26), "M", {}, TODAY, {"bilan-18-25": None}),
    ("bilan: done at 20 -> done", born(22), "F", {"bilan-18-25": "2024-05-05"}, TODAY, {"bilan-18-25": F}),
    ("bilan: 47 -> the 45-50 one", born(47), "M", {}, TODAY, {"bilan-45-50": D, "bilan-60-65": U}),
    ("bilan: 62 -> the 60-65 one", born(62), "F", {}, TODAY, {"bilan-60-65": D}),
    ("bilan: 73 -> the 70-75 one", born(73), "M", {}, TODAY, {"bilan-70-75": D, "bilan-60-65": None}),
    # ---- the 20 examinations of the child
    ("child: 3 days old -> within 8 days", born(days=3), "F", {}, TODAY, {"examen-8-jours": D, "examen-2e-semaine": U}),
    ("child: 10 days -> 2nd week; 8-day one late", born(days=10), "M", {}, TODAY, {"examen-2e-semaine": D, "examen-8-jours": O}),
    ("child: 20 days -> before the end of month 1", born(days=20), "M", {}, TODAY, {"examen-1-mois": D, "examen-8-jours": None}),
    ("child: 2 months", born(0, 2), "F", {}, TODAY, {"examen-2-mois": D}),
    ("child: 3 months", born(0, 3), "F", {}, TODAY, {"examen-3-mois": D, "examen-2-mois": None}),
    ("child: 4 months", born(0, 4), "F", {}, TODAY, {"examen-4-mois": D}),
    ("child: 5 months", born(0, 5), "F", {}, TODAY, {"examen-5-mois": D}),
    ("child: 6 months", born(0, 6), "F", {}, TODAY, {"examen-6-mois": D}),
    ("child: 7 months, 6-month exam not done -> late until 9", born(0, 7), "F", {}, TODAY, {"examen-6-mois": O, "examen-9-mois": U}),
    ("child: 9 months", born(0, 9), "M", {}, TODAY, {"examen-9-mois": D}),
    ("child: 12 months", born(1), "M", {}, TODAY, {"examen-12-mois": D}),
    ("child: 13 months", born(1, 1), "M", {}, TODAY, {"examen-13-mois": D}),
    ("child: 17 months -> 16-18", born(1, 5), "M", {}, TODAY, {"examen-16-18-mois": D}),
    ("child: 25 months -> 24th or 25th", born(2, 1), "F", {}, TODAY, {"examen-24-25-mois": D}),
    ("child: 3 years", born(3, 2), "F", {}, TODAY, {"examen-3-ans": D}),
    ("child: 4 years", born(4), "F", {}, TODAY, {"examen-4-ans": D}),
    ("child: 5 years", born(5), "F", {}, TODAY, {"examen-5-ans": D}),
    ("child: 6 years", born(6), "F", {}, TODAY, {"examen-6-ans": D, "vaccin-dtcap-6-ans": D}),
    ("child: 9 years -> 8-9", born(9), "M", {}, TODAY, {"examen-8-9-ans": D}),
    ("child: 12 years -> 11-13", born(12), "F", {}, TODAY, {"examen-11-13-ans": D, "vaccin-dtcap-11-13-ans": D, "vaccin-hpv": D}),
    ("child: 16 years -> 15-16", born(16), "M", {}, TODAY, {"examen-15-16-ans": D}),
    ("child: done exam is done", born(0, 2, 5), "F", {"examen-2-mois": "2026-03-01"}, TODAY, {"examen-2-mois": F}),
    # ---- vaccinations, 2025 calendar
    (
        "vaccine: 2 months -> hexavalent 1 and pneumococcus 1",
        born(0, 2),
        "F",
        {},
        TODAY,
        {"vaccin-hexavalent-1": D, "vaccin-pneumocoque-1": D, "vaccin-hexavalent-2": U},
    ),
    (
        "vaccine: 4 months -> 2nd doses",
        born(0, 4),
        "F",
        {"vaccin-hexavalent-1": "2026-01-10", "vaccin-pneumocoque-1": "2026-01-10"},
        TODAY,
        {"vaccin-hexavalent-2": D, "vaccin-pneumocoque-2": D, "vaccin-hexavalent-1": F},
    ),
    ("vaccine: 11 months -> 3rd doses", born(0, 11), "M", {}, TODAY, {"vaccin-hexavalent-3": D, "vaccin-pneumocoque-3": D}),
    (
        "vaccine: MenB at 3, 5, 12 months",
        born(0, 3),
        "M",
        {},
        TODAY,
        {
            "vaccin-meningocoque-b-1": D,
            "vaccin-meningocoque-b-2": (U, add(born(0, 3), Span(5))),
            "vaccin-meningocoque-b-3": (U, add(born(0, 3), Span(12))),
        },
    ),
    ("vaccine: MenB 2nd at 5 months", born(0, 5), "M", {}, TODAY, {"vaccin-meningocoque-b-2": D}),
    ("vaccine: ACWY at 6 months", born(0, 6), "F", {}, TODAY, {"vaccin-meningocoque-acwy-1": D}),
    (
        "vaccine: 12 months -> ACWY, MMR, MenB",
        born(1),
        "F",
        {},
        TODAY,
        {"vaccin-meningocoque-acwy-2": D, "vaccin-ror-1": D, "vaccin-meningocoque-b-3": D},
    ),
    ("vaccine: MMR 2nd at 16-18 months", born(1, 5), "F", {}, TODAY, {"vaccin-ror-2": D}),
    ("vaccine: HPV catch-up at 17 -> late", born(17), "M", {}, TODAY, {"vaccin-hpv": O}),
    ("vaccine: HPV at 20 -> no longer", born(20), "F", {}, TODAY, {"vaccin-hpv": None}),
    ("vaccine: dTP at 25", born(25), "M", {}, TODAY, {"vaccin-dtp-25-ans": D}),
    ("vaccine: dTP at 45", born(45), "M", {}, TODAY, {"vaccin-dtp-45-ans": D, "vaccin-dtp-25-ans": None}),
    ("vaccine: dTP at 65", born(65), "F", {}, TODAY, {"vaccin-dtp-65-ans": D}),
    (
        "vaccine: dTP after 65 every 10 years",
        born(70),
        "F",
        {"vaccin-dtp-65-ans": "2021-04-01"},
        TODAY,
        {"vaccin-dtp-65-ans": (U, date(2031, 4, 1))},
    ),
    (
        "vaccine: 65 -> pneumococcus once and shingles",
        born(65),
        "M",
        {},
        TODAY,
        {"vaccin-pneumocoque-adulte": D, "vaccin-zona": D, "vaccin-vrs": U},
    ),
    (
        "vaccine: pneumococcus once, done -> done for good",
        born(70),
        "M",
        {"vaccin-pneumocoque-adulte": "2021-01-01"},
        TODAY,
        {"vaccin-pneumocoque-adulte": F},
    ),
    ("vaccine: RSV from 75", born(75), "F", {}, TODAY, {"vaccin-vrs": D}),
    ("vaccine: RSV not before 75", born(74), "F", {}, TODAY, {"vaccin-vrs": U}),
    ("flu: 70 in November -> due in the campaign", born(70), "F", {}, date(2026, 11, 2), {"vaccin-grippe": (D, date(2026, 10, 15))}),
    (
        "flu: 70 in January -> the campaign runs across the new year",
        born(70),
        "F",
        {},
        date(2027, 1, 20),
        {"vaccin-grippe": (D, date(2026, 10, 15))},
    ),
    ("flu: 70 in March -> next campaign", born(70), "F", {}, TODAY, {"vaccin-grippe": (U, date(2026, 10, 15))}),
    ("flu: done this campaign -> done", born(70), "M", {"vaccin-grippe": "2026-10-20"}, date(2026, 12, 1), {"vaccin-grippe": F}),
    ("flu: done last campaign -> due again", born(70), "M", {"vaccin-grippe": "2025-10-20"}, date(2026, 11, 1), {"vaccin-grippe": D}),
    (
        "flu: 64 turning 65 in December -> the next campaign",
        date(1961, 12, 1),
        "F",
        {},
        date(2026, 11, 1),
        {"vaccin-grippe": (U, date(2027, 10, 15))},
    ),
    ("flu: 40 -> not listed until then", born(40), "F", {}, TODAY, {"vaccin-grippe": (U, None)}),
    # ---- marks
    ("not applicable: shown as such, nothing due", born(55), "F", {"depistage-sein": None}, TODAY, {"depistage-sein": NA}),
    ("birth on 29 February: 50 on 28 February", date(1976, 2, 29), "F", {}, date(2026, 2, 28), {"depistage-sein": (D, date(2026, 2, 28))}),
]


@pytest.mark.parametrize(("born_on", "sex", "done", "today", "expect"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_what_is_due(born_on: date, sex: str, done: dict[str, str | None], today: date, expect: dict[str, object]) -> None:
    items = {item.key: item for item in evaluate(TABLE, born_on, sex, marks(**done), today)}
    for key, wanted in expect.items():
        assert TABLE.rule(key) is not None, key
        if wanted is None:
            assert key not in items, f"{key} should not be listed: {items.get(key)}"
            continue
        state, due_from = wanted if isinstance(wanted, tuple) else (wanted, "any")
        assert key in items, f"{key} is not listed"
        assert items[key].state is state, f"{key}: {items[key].state} instead of {state} ({items[key]})"
        if due_from not in ("any", None):
            assert items[key].due_from == due_from, f"{key}: due {items[key].due_from}, expected {due_from}"


def test_every_rule_of_the_table_is_covered_by_a_case() -> None:
    covered = {key for case in CASES for key in case[5]}
    assert {rule.key for rule in TABLE.rules} <= covered, {rule.key for rule in TABLE.rules} - covered


def test_the_table_has_its_source_and_version_and_the_twenty_child_examinations() -> None:
    assert TABLE.version and "vaccinations" in TABLE.name
    assert len([rule for rule in TABLE.rules if rule.kind == "examen"]) == 20


def test_a_new_version_of_the_table_changes_what_is_due_without_code(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "caducee" / "agenda" / "prevention.toml").read_text(encoding="utf-8")
    changed = (
        text.replace('version = "2025.1"', 'version = "2026.1"')
        .replace('key = "vaccin-vrs"', 'key = "vaccin-vrs"\n# from 2026: 65')
        .replace(
            'label = "Vaccin contre le virus respiratoire syncytial (VRS, à partir de 75 ans)"\nsex = "*"\nfrom = "75y"',
            'label = "Vaccin contre le virus respiratoire syncytial (VRS, à partir de 65 ans)"\nsex = "*"\nfrom = "65y"',
        )
    )
    path = tmp_path / "prevention.toml"
    path.write_text(changed, encoding="utf-8")
    new = load_table(path)
    assert new.version == "2026.1"
    seventy = born(70)
    old_state = {i.key: i.state for i in evaluate(TABLE, seventy, "F", History.empty(), TODAY)}
    new_state = {i.key: i.state for i in evaluate(new, seventy, "F", History.empty(), TODAY)}
    assert old_state["vaccin-vrs"] is U and new_state["vaccin-vrs"] is O


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[source]\nname = "x"\n', "version"),
        ('[source]\nname = "x"\nversion = "1"\n[[item]]\nkey = "a"\nkind = "vaccin"\nlabel = "A"\nfrom = "ten years"\n', "not a span"),
        ('[source]\nname = "x"\nversion = "1"\n[[item]]\nkey = "a"\nkind = "vaccin"\nlabel = "A"\nafter = ["b"]\n', "names no item"),
        ('[source]\nname = "x"\nversion = "1"\n[[item]]\nkey = "a"\nkind = "potion"\nlabel = "A"\n', "kind"),
        ('[source]\nname = "x"\nversion = "1"\n[[item]]\nkey = "a"\nkind = "vaccin"\nlabel = "A"\ncolour = "red"\n', "unknown field"),
    ],
)
def test_a_table_that_makes_no_sense_is_refused_whole(text: str, why: str) -> None:
    with pytest.raises(TableError, match=why):
        parse_table(text)


@pytest.mark.parametrize("day", [date(2026, 3, 31), date(2026, 10, 15), date(2028, 2, 29)])
def test_the_daily_candidates_miss_nobody(day: date) -> None:
    """Everyone for whom something falls due on `day` with no history is a candidate:
    checked on every birth date near each rule's age and on 3,000 others at random."""
    import random
    from datetime import timedelta

    from caducee.agenda.spans import subtract

    found = candidates(TABLE, day)
    chance = random.Random(day.toordinal())
    probes = {day - timedelta(days=chance.randrange(0, 100 * 365)) for _ in range(3000)}
    for rule in TABLE.rules:
        around = subtract(day, rule.start)
        probes.update(around + timedelta(days=shift) for shift in range(-10, 11))
    for probe in probes:
        if falling_due(TABLE, probe, "I", History.empty(), day):
            assert probe in found, probe


def test_the_daily_candidates_miss_nobody_with_marks() -> None:
    """With random histories: whoever has something falling due is worth evaluating."""
    import random

    chance = random.Random(5)
    keys = [rule.key for rule in TABLE.rules]
    for day in (date(2026, 3, 31), date(2027, 6, 1)):
        found = candidates(TABLE, day)
        for _ in range(3000):
            born_on = day - __import__("datetime").timedelta(days=chance.randrange(0, 90 * 365))
            rows = [
                (chance.choice(keys), born_on + __import__("datetime").timedelta(days=chance.randrange(0, max(1, (day - born_on).days))))
                for _ in range(chance.randint(1, 4))
            ]
            if falling_due(TABLE, born_on, "I", History.of(rows), day):
                assert found.worth_evaluating(born_on, rows), (born_on, rows)


def test_ages_at_month_ends() -> None:
    assert add(date(2024, 1, 31), Span(1)) == date(2024, 2, 29)
    assert sorted(preimage(date(2025, 2, 28), Span(1))) == [date(2025, 1, 28), date(2025, 1, 29), date(2025, 1, 30), date(2025, 1, 31)]
    assert add(date(1976, 2, 29), Span(50 * 12)) == date(2026, 2, 28)
