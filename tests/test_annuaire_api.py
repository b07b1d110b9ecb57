"""The annuaire over HTTP (a real uvicorn socket, httpx as the client), on both backends."""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire.formats import EXTRACTION_COLUMNS
from caducee.annuaire.importer import import_on_connection
from caducee.annuaire.synthetic import extraction_row, write_file


async def load(engine: AsyncEngine, tmp_path: Path) -> list[list[str]]:
    rows = [extraction_row(n) for n in range(45)]
    rows += [
        extraction_row(
            200,
            mailbox_type="ORG",
            address="officine@pharmacie-eglise.mssante.fr",
            structure_name="PHARMACIE DE L'ÉGLISE",
            city=("69003", "LYON"),
        ),
        extraction_row(
            201,
            mailbox_type="ORG",
            address="accueil@pharmacie-gare.mssante.fr",
            structure_name="PHARMACIE DE LA GARE",
            city=("69007", "LYON"),
        ),
        extraction_row(
            202, mailbox_type="ORG", address="urgences@ch-lyon.mssante.fr", structure_name="CENTRE HOSPITALIER", city=("69003", "LYON")
        ),
    ]
    async with engine.begin() as conn:
        await import_on_connection(conn, "extraction", write_file(tmp_path / "e.txt", EXTRACTION_COLUMNS, rows))
    return rows


async def test_search_by_name_place_profession_type_and_pages(engine: AsyncEngine, http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = await load(engine, tmp_path)
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        found = (await client.get("/api/v1/annuaire/search", params={"name": "pharmacie eglise"})).json()
        assert [item["address"] for item in found["items"]] == ["officine@pharmacie-eglise.mssante.fr"]

        lyon = (await client.get("/api/v1/annuaire/search", params={"name": "Pharmacie", "place": "Lyon"})).json()
        assert lyon["total"] == 2 and all(item["is_officine"] for item in lyon["items"])
        by_postcode = (await client.get("/api/v1/annuaire/search", params={"place": "69003", "type": "ORG"})).json()
        assert {item["address"] for item in by_postcode["items"]} == {"officine@pharmacie-eglise.mssante.fr", "urgences@ch-lyon.mssante.fr"}
        officines = (await client.get("/api/v1/annuaire/search", params={"place": "lyon", "officine": "true"})).json()
        assert officines["total"] == 2

        nurses = (await client.get("/api/v1/annuaire/search", params={"profession": "60", "per_page": 100})).json()
        assert nurses["total"] == sum(1 for row in rows if row[13] == "60")
        assert all(item["profession_label"] == "Infirmier" for item in nurses["items"])

        page1 = (await client.get("/api/v1/annuaire/search", params={"type": "PER", "per_page": 20})).json()
        page3 = (await client.get("/api/v1/annuaire/search", params={"type": "PER", "per_page": 20, "page": 3})).json()
        assert page1["total"] == 45 and len(page1["items"]) == 20 and len(page3["items"]) == 5
        assert not {i["address"] for i in page1["items"]} & {i["address"] for i in page3["items"]}

        # LIKE wildcards typed by a user are plain characters.
        assert (await client.get("/api/v1/annuaire/search", params={"name": "%"})).json()["total"] == 0


async def test_search_errors_are_clear(engine: AsyncEngine, http) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        response = await client.get("/api/v1/annuaire/search")
        assert response.status_code == 422 and "at least one criterion" in response.json()["detail"]
        response = await client.get("/api/v1/annuaire/search", params={"name": "x", "per_page": 1000})
        assert response.status_code == 422 and "between 1 and 100" in response.json()["detail"]
        response = await client.get("/api/v1/annuaire/search", params={"type": "ZZZ"})
        assert response.status_code == 422 and "PER, ORG, APP or CAB" in response.json()["detail"]
        response = await client.get("/api/v1/annuaire/search", params={"name": "x" * 500})
        assert response.status_code == 422


async def test_mailbox_lookup(engine: AsyncEngine, http, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rows = await load(engine, tmp_path)
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        entry = (await client.get(f"/api/v1/annuaire/mailboxes/{rows[0][1].upper()}")).json()
        assert entry["address"] == rows[0][1] and entry["last_name"] == rows[0][9]
        missing = await client.get("/api/v1/annuaire/mailboxes/nobody@nowhere.mssante.fr")
        assert missing.status_code == 404 and "no published mailbox" in missing.json()["detail"]
        assert (await client.get("/api/v1/annuaire/mailboxes/..%2F..%2Fetc")).status_code == 404


async def test_operations_endpoints(engine: AsyncEngine, http) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(base_url=http.base_url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        home = await client.get("/", follow_redirects=True)  # the webmail: the login page until one logs in
        assert home.status_code == 200 and 'lang="fr"' in home.text and "Se connecter" in home.text
        assert "/api/v1/annuaire/search" in (await client.get("/openapi.json")).json()["paths"]
        assert (await client.get("/docs")).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'caducee_http_requests_total{method="GET",status="200"}' in metrics
