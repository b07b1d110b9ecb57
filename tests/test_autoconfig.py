"""Thunderbird autoconfig on the HTTP app: address and password are all a professional types."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
import pytest


def servers(document: str) -> list[tuple[str, str, str, str]]:
    root = ET.fromstring(document)
    found = []
    for server in root.iter():
        if server.tag in ("incomingServer", "outgoingServer"):
            found.append((server.get("type"), server.findtext("port"), server.findtext("socketType"), server.findtext("username")))
    return found


@pytest.mark.parametrize("path", ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"])
@pytest.mark.parametrize("query", ["", "?emailaddress=sophie.bernard%40demo.mssante.fr"])
async def test_autoconfig_lists_imap_and_submission(http, path: str, query: str) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        response = await client.get(path + query)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert servers(response.text) == [
        ("imap", "1993", "SSL", "%EMAILADDRESS%"),
        ("imap", "1143", "STARTTLS", "%EMAILADDRESS%"),
        ("smtp", "5465", "SSL", "%EMAILADDRESS%"),
        ("smtp", "5587", "STARTTLS", "%EMAILADDRESS%"),
    ]
    assert "<domain>demo.mssante.fr</domain>" in response.text


async def test_autoconfig_refuses_bad_and_foreign_addresses(http) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        bad = await client.get("/mail/config-v1.1.xml", params={"emailaddress": "pas une adresse"})
        foreign = await client.get("/mail/config-v1.1.xml", params={"emailaddress": "x@gmail.com"})
        xml_trick = await client.get("/mail/config-v1.1.xml", params={"emailaddress": "<a>@demo.mssante.fr"})
    assert bad.status_code == 400 and foreign.status_code == 404 and xml_trick.status_code == 400
