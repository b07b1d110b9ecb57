"""The patient's answer to an invitation: a reply in the invitation's conversation whose
calendar part is the iTIP METHOD:REPLY, built for the gateway's accept pipeline like any
message the webmail sends."""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from caducee.agenda import ical
from caducee.mime.headers import MAIL_POLICY

_POLICY = MAIL_POLICY


def _address(name: str, address: str) -> Address:
    local, _, domain = address.partition("@")
    return Address(display_name=name, username=local, domain=domain)


def answer(
    *,
    patient_name: str,
    patient: str,
    organizer_name: str,
    organizer: str,
    uid: str,
    sequence: int,
    summary: str,
    starts_at: datetime,
    when_text: str,
    accepted: bool,
    in_reply_to: str,
    hostname: str,
    now: datetime,
) -> bytes:
    verb = "accepté" if accepted else "refusé"
    message = EmailMessage(policy=_POLICY)
    message["From"] = _address(patient_name, patient)
    message["To"] = _address(organizer_name, organizer)
    message["Subject"] = f"{'Accepté' if accepted else 'Refusé'} : {summary or 'Rendez-vous'} ({when_text})"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=hostname)
    message["In-Reply-To"] = in_reply_to
    message["References"] = in_reply_to
    message.set_content(f"{patient_name} a {verb} le rendez-vous du {when_text}.\n", charset="utf-8", cte="quoted-printable")
    calendar = ical.reply(
        uid=uid,
        sequence=sequence,
        organizer=organizer,
        attendee=patient,
        attendee_name=patient_name,
        accepted=accepted,
        summary=summary,
        starts_at=starts_at,
        now=now,
    )
    message.add_alternative(
        calendar.decode("utf-8"), subtype="calendar", charset="utf-8", cte="quoted-printable", params={"method": "REPLY"}
    )
    return message.as_bytes()
