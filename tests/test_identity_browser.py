"""The professional portal in a real browser: Debian's Chromium driven by Playwright against
`caducee serve --demo`, which starts the local Pro Santé Connect stand-in as its own
process; the whole sign-in goes through the stand-in's own pages.

Every portal page is checked with axe-core and at 1280 and 360 px (no sideways scrolling),
and photographed (CADUCEE_SCREENSHOTS=docs/screenshots puts the pictures where the README
links them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import BACKENDS, free_port
from test_webmail_browser import CHROMIUM, CHROMIUM_ARGS, _database_for, check_page

playwright_sync = pytest.importorskip("playwright.sync_api")


@contextmanager
def serve_demo(directory: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """`caducee serve --demo` in `directory` (its credentials and outbox in `directory/var`),
    with the stand-in it starts; (the HTTP base URL, the stand-in's port)."""
    http_port, psc_port = free_port(), free_port()
    env = {
        **os.environ,
        "CADUCEE_DATA_DIR": str(directory / "var"),
        "CADUCEE_DATABASE_URL": _database_for(backend, directory, request),
        "CADUCEE_HTTP_PORT": str(http_port),
        "CADUCEE_DEMO_PSC_PORT": str(psc_port),
        "CADUCEE_WEBMAIL_COOKIE_SECURE": "false",
        "CADUCEE_SUBMISSION_PORT": str(free_port()),
        "CADUCEE_SUBMISSIONS_PORT": str(free_port()),
        "CADUCEE_MX_PORT": "0",
        "CADUCEE_IMAP_PORT": str(free_port()),
        "CADUCEE_IMAPS_PORT": str(free_port()),
        "CADUCEE_LOG_LEVEL": "INFO",
    }
    log_path = directory / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "caducee", "serve", "--demo"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield base_url, psc_port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()
    text = log_path.read_text()
    assert "eyJ" not in text, "a token was logged"  # JWTs start with eyJ
    with pytest.raises(httpx.HTTPError):  # the stand-in stopped with serve
        httpx.get(f"http://127.0.0.1:{psc_port}/auth/realms/esante-wallet/.well-known/openid-configuration", timeout=2)


@pytest.fixture(scope="module", params=BACKENDS)
def pro_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with serve_demo(tmp_path_factory.mktemp(f"pro-site-{request.param}"), request.param, request) as running:
        yield running


@pytest.fixture(scope="module")
def pro_browser(pro_site: tuple[str, int]) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package", pytrace=False)
    with playwright_sync.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, env={**os.environ, "LANG": "fr_FR.UTF-8"}
        )
        yield chromium
        chromium.close()


def sign_in(page: Any, base_url: str, who: str, means: str = "Application e-CPS") -> None:
    page.goto(f"{base_url}/pro/")
    page.get_by_role("link", name="Se connecter avec Pro Santé Connect").click()
    page.wait_for_url("**/protocol/openid-connect/auth**")  # the stand-in's own page
    assert "Pro Santé Connect" in page.content()
    page.get_by_label(who).check()
    page.get_by_label(means).check()
    page.get_by_role("button", name="Se connecter", exact=True).click()


def test_sign_in_through_the_stand_in_pages_see_mailboxes_sign_out(pro_site: tuple[str, int], pro_browser: Any, tmp_path: Path) -> None:
    base_url, psc_port = pro_site
    shots = Path(os.environ.get("CADUCEE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    context = pro_browser.new_context(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{base_url}/pro/")
        check_page(page, "20-pro-connexion", shots)
        sign_in(page, base_url, "Sophie Bernard — Médecin (n° 810000000009)")
        page.wait_for_url(f"{base_url}/pro/")
        assert page.get_by_role("heading", level=1).inner_text() == "Bonjour Dr Sophie Bernard"
        boxes = page.locator(".boxes li").all_inner_texts()
        assert any("sophie.bernard@demo.mssante.fr" in box for box in boxes) and any(
            "cabinet.lilas@demo.mssante.fr" in box for box in boxes
        )
        check_page(page, "21-pro-espace", shots)
        page.get_by_role("button", name="Se déconnecter").click()  # here, then at the provider, then back
        page.wait_for_url(f"{base_url}/pro/deconnecte")
        assert "Vous êtes déconnecté" in page.get_by_role("heading", level=1).inner_text()
        check_page(page, "22-pro-deconnecte", shots)
        page.goto(f"{base_url}/pro/")
        assert page.get_by_role("link", name="Se connecter avec Pro Santé Connect").count() == 1

        sign_in(page, base_url, "Jean Inconnu — Médecin (n° 810000000033)")
        page.wait_for_url("**/pro/connexion/retour**")
        assert "vous n'êtes pas inscrit dans l'annuaire" in page.get_by_role("alert").inner_text()
        check_page(page, "23-pro-refus-inconnu", shots)

        sign_in(
            page,
            base_url,
            "Karim Haddad — Infirmier (n° 810000000017)",
            means="Identifiant et mot de passe (niveau insuffisant, pour essayer un refus)",
        )
        page.wait_for_url("**/pro/connexion/retour**")
        assert "niveau de sécurité exigé" in page.get_by_role("alert").inner_text()
        check_page(page, "24-pro-refus-niveau", shots)
    finally:
        context.close()
