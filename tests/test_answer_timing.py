"""Pages whose words hide whether an account exists must not tell it by their timing: the
forgotten-password request and the activation code check answer no sooner than one floor,
whichever branch they took (`core.timing`). What is checked is that floor, a lower bound
(a sleep guarantees it), in every branch: no speed is measured here."""

from __future__ import annotations

import time

from test_webmail import Webmail, webmail  # noqa: F401 - the fixture
from webmail_client import form_token

from caducee.webmail.accounts import ACTIVATION_ANSWER_FLOOR
from caducee.webmail.selfservice import RESET_ANSWER_FLOOR


async def test_every_branch_answers_no_sooner_than_the_same_floor(webmail: Webmail) -> None:  # noqa: F811
    claire, waiting = webmail.patient("adult_1"), webmail.patient("not_activated")
    async with webmail.client() as client:
        csrf = form_token((await client.get("/mot-de-passe-oublie")).text)
        for identifier in (claire["ins"], "185057800608491", "personne@example.org"):  # known, unknown INS, unknown email
            began = time.monotonic()
            asked = await client.post("/mot-de-passe-oublie", data={"csrf": csrf, "identifiant": identifier})
            assert asked.status_code == 303 and time.monotonic() - began >= RESET_ANSWER_FLOOR, identifier

        csrf = form_token((await client.get("/activation")).text)
        wrong = {"code": "00000000", "email": "marc.dubois@example.org", "mot_de_passe": "bonjour-2026", "confirmation": "bonjour-2026"}
        # a created profile (its try is a committed write), an activated one, an unknown INS
        for ins in (waiting["ins"], claire["ins"], "185057800608491"):
            began = time.monotonic()
            refused = await client.post("/activation", data={"csrf": csrf, "ins": ins, **wrong})
            assert refused.status_code == 400 and "code provisoire incorrect" in refused.text
            assert time.monotonic() - began >= ACTIVATION_ANSWER_FLOOR, ins
