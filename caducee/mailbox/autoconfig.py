"""Thunderbird autoconfig (`config-v1.1.xml`): a professional adds the account with the
address and the password only; the client learns the IMAP and SMTP servers from here.

Served at `/.well-known/autoconfig/mail/config-v1.1.xml` (what Thunderbird asks the mail
domain) and `/mail/config-v1.1.xml` (what it asks `autoconfig.<domain>`), with or without
`?emailaddress=`; with it, the address must be one of our domains.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from caducee.annuaire.identifiers import InvalidIdentifier, validate_mailbox_address
from caducee.config import Settings

router = APIRouter(include_in_schema=False)


def config_xml(settings: Settings, domain: str) -> str:
    """The document: IMAP on implicit TLS first, STARTTLS second; submission the same way."""
    host = escape(settings.hostname)
    listeners = [
        ("incomingServer", "imap", settings.imaps_port, "SSL"),
        ("incomingServer", "imap", settings.imap_port, "STARTTLS"),
        ("outgoingServer", "smtp", settings.submissions_port, "SSL"),
        ("outgoingServer", "smtp", settings.submission_port, "STARTTLS"),
    ]
    servers = [
        f"""    <{tag} type="{kind}">
      <hostname>{host}</hostname>
      <port>{port}</port>
      <socketType>{socket_type}</socketType>
      <authentication>password-cleartext</authentication>
      <username>%EMAILADDRESS%</username>
    </{tag}>"""
        for tag, kind, port, socket_type in listeners
        if port
    ]
    domains = "\n".join(f"    <domain>{escape(d)}</domain>" for d in dict.fromkeys([domain, *settings.local_domains]))
    servers_xml = "\n".join(servers)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="{escape(settings.operator_domain)}">
{domains}
    <displayName>Caducée — messagerie sécurisée de santé</displayName>
    <displayShortName>Caducée</displayShortName>
{servers_xml}
  </emailProvider>
</clientConfig>
"""


async def _autoconfig(request: Request, emailaddress: str | None) -> Response:
    settings: Settings = request.app.state.settings
    domain = settings.operator_domain
    if emailaddress is not None:
        try:
            address = validate_mailbox_address(emailaddress)
        except InvalidIdentifier as error:
            raise HTTPException(400, f"adresse invalide : {error}") from None
        domain = address.rpartition("@")[2]
        if domain not in {d.lower() for d in settings.local_domains}:
            raise HTTPException(404, f"{domain} n'est pas un domaine de cet opérateur")
    return Response(config_xml(settings, domain), media_type="application/xml")


@router.get("/.well-known/autoconfig/mail/config-v1.1.xml")
async def well_known(request: Request, emailaddress: str | None = Query(default=None, max_length=320)) -> Response:
    return await _autoconfig(request, emailaddress)


@router.get("/mail/config-v1.1.xml")
async def autoconfig_host(request: Request, emailaddress: str | None = Query(default=None, max_length=320)) -> Response:
    return await _autoconfig(request, emailaddress)
