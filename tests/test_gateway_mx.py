"""The MX listener: mutual TLS, trust anchors, the whitelist and its operator DNs."""

from __future__ import annotations

import ssl
from email.policy import SMTP as SMTP_POLICY

import aiosmtplib
import pytest
from mail import message

from caducee.crypto.devpki import DevCA
from caducee.crypto.tls import client_context

PEER_SENDER = "dr.durand@autre-operateur.mssante.fr"


def peer_tls(gateway, issued=None) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return client_context(gateway.ca.files.cert, issued if issued is not None else gateway.peer)


async def send_mx(gateway, sender: str, rcpt: str, tls_context: ssl.SSLContext, data: bytes | None = None):  # type: ignore[no-untyped-def]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=gateway.ports["mx"], start_tls=True, tls_context=tls_context) as client:
        return await client.sendmail(sender, [rcpt], data or message(sender, rcpt).as_bytes(policy=SMTP_POLICY))


async def test_trusted_operator_delivers_to_a_patient(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    errors, reply = await send_mx(gateway, PEER_SENDER, patient, peer_tls(gateway))
    assert errors == {} and "2.0.0" in reply
    assert len(await gateway.inbox(patient)) == 1


async def test_client_certificate_is_required(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    no_cert = client_context(gateway.ca.files.cert)
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
        await send_mx(gateway, PEER_SENDER, patient, no_cert)
    assert await gateway.inbox(patient) == []


async def test_certificate_from_an_untrusted_ca_is_refused(gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rogue = DevCA(tmp_path / "rogue", name="Rogue CA").issue("rogue", "mx.autre-operateur.mssante.fr", "Autre Operateur", client=True)
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    with pytest.raises((aiosmtplib.SMTPException, ssl.SSLError, ConnectionError)):
        await send_mx(gateway, PEER_SENDER, patient, client_context(gateway.ca.files.cert, rogue))
    assert await gateway.inbox(patient) == []


async def test_domain_not_on_whitelist_and_dn_mismatch_are_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send_mx(gateway, "x@pas-dans-la-liste.fr", patient, peer_tls(gateway))
    assert caught.value.code == 550 and "5.7.1" in caught.value.message
    other = gateway.ca.issue("other", "mx.someone-else.mssante.fr", "Someone Else", client=True)
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as caught:
        await send_mx(gateway, PEER_SENDER, patient, peer_tls(gateway, other))
    assert caught.value.code == 550 and "operator certificate" in caught.value.message


async def test_mx_does_not_relay(gateway) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as caught:
        await send_mx(gateway, PEER_SENDER, "someone@autre-operateur.mssante.fr", peer_tls(gateway))
    assert "relaying denied" in caught.value.recipients[0].message


async def test_mx_refuses_local_senders(gateway) -> None:  # type: ignore[no-untyped-def]
    patient = gateway.credentials["patients"]["adult_2"]["address"]
    with pytest.raises(aiosmtplib.SMTPSenderRefused):
        await send_mx(gateway, gateway.account("doctor")[0], patient, peer_tls(gateway))
