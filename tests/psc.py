"""Test helpers for Pro Santé Connect: the stand-in as a process of its own, and the steps a
browser or a practice software takes on its pages (over real HTTP, followed with httpx)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from caducee.identity.standin.config import StandinClient, StandinConfig, dump

PORTAL_CLIENT = "caducee-test"
PORTAL_SECRET = "secret-de-test-" + "x" * 16
SOFTWARE_CLIENT = "logiciel-test"  # a public client whose tokens are for Caducée
OTHER_SERVICE = "autre-service"  # a public client whose tokens are for itself
REALM, OTHER_REALM = "esante-wallet", "autre-royaume"


def standin_config(userinfo_format: str = "json") -> StandinConfig:
    from caducee import demo

    return StandinConfig(
        realms=(REALM, OTHER_REALM),
        clients=(
            StandinClient(PORTAL_CLIENT, PORTAL_SECRET, ("http://127.0.0.1/pro/connexion/retour",), ("http://127.0.0.1/pro/deconnecte",)),
            StandinClient(SOFTWARE_CLIENT, None, ("http://127.0.0.1/callback",), audience=(PORTAL_CLIENT,)),
            StandinClient(OTHER_SERVICE, None, ("http://127.0.0.1/callback",)),
        ),
        users=tuple(demo.psc_standin_users()),
        userinfo_format=userinfo_format,
    )


@dataclass
class Standin:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def issuer(self, realm: str = REALM) -> str:
        return f"http://127.0.0.1:{self.port}/auth/realms/{realm}"

    def discovery(self, realm: str = REALM) -> str:
        return self.issuer(realm) + "/.well-known/openid-configuration"

    def rotate_keys(self) -> None:
        """SIGUSR1: a new signing key; waits until the key set served shows it."""
        before = httpx.get(self.issuer() + "/protocol/openid-connect/certs").json()["keys"][0]["kid"]
        self.process.send_signal(signal.SIGUSR1)
        for _ in range(200):
            if httpx.get(self.issuer() + "/protocol/openid-connect/certs").json()["keys"][0]["kid"] != before:
                return
            time.sleep(0.05)
        raise AssertionError("the stand-in did not rotate its key")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=20)


def start_standin(directory: Path, config: StandinConfig) -> Standin:
    path = directory / "standin.json"
    path.write_text(json.dumps(dump(config)), encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = directory / "standin.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "caducee.identity.standin", "--config", str(path), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    standin = Standin(process, port, log)
    for _ in range(300):
        try:
            if httpx.get(standin.discovery(), timeout=2).status_code == 200:
                return standin
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError("stand-in did not start")


def choose_on_standin(
    page: httpx.Response, client: httpx.Client, national_id: str, *, means: str = "ecps", fault: str = ""
) -> httpx.Response:
    """Submit the stand-in's sign-in form (the page a professional sees) as `national_id`."""
    assert page.status_code == 200, page.text
    action = html.unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    url = str(page.url).split("?")[0] + action
    return client.post(url, data={"professionnel": national_id, "moyen": means, "anomalie": fault, "action": "connexion"})


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    return {key: values[0] for key, values in parse_qs(urlsplit(response.headers["location"]).query).items()}


def obtain_token(
    standin: Standin, national_id: str, *, client_id: str = SOFTWARE_CLIENT, realm: str = REALM, means: str = "ecps", fault: str = ""
) -> dict[str, Any]:
    """What practice software does: authorization code flow with PKCE as a public client on a
    loopback redirect URI (RFC 8252), then the token endpoint. Returns the token response."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    redirect_uri = "http://127.0.0.1:49152/callback"
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid scope_all",
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "acr_values": "eidas1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(timeout=30) as client:
        page = client.get(standin.issuer(realm) + "/protocol/openid-connect/auth?" + urlencode(query))
        code = redirect_params(choose_on_standin(page, client, national_id, means=means, fault=fault))["code"]
        answer = client.post(
            standin.issuer(realm) + "/protocol/openid-connect/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def token_for(standin: Standin, national_id: str, **kwargs: Any) -> str:
    return str((await asyncio.to_thread(obtain_token, standin, national_id, **kwargs))["access_token"])


# ---- fixtures (imported by the test modules that use them) ----------------------------------

import dataclasses  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """The stand-in, one process for the session (its state is per sign-in, not per test)."""
    running = start_standin(tmp_path_factory.mktemp("standin"), standin_config())
    try:
        yield running
    finally:
        running.stop()


def psc_settings(settings: Any, standin: Standin, **changes: Any) -> Any:
    return dataclasses.replace(
        settings,
        psc_discovery_url=standin.discovery(),
        psc_client_id=PORTAL_CLIENT,
        psc_client_secret=PORTAL_SECRET,
        webmail_cookie_secure=False,
        **changes,
    )


@dataclass
class Portal:
    base_url: str
    settings: Any
    engine: Any
    credentials: dict[str, Any]
    app: Any = None


@pytest.fixture
async def portal(engine: Any, settings: Any, standin: Standin) -> AsyncIterator[Portal]:
    """The HTTP app (portal and APIs) on a loopback port, with the demo world, pointed at the stand-in."""
    from conftest import RunningHTTP

    from caducee import demo
    from caducee.server import build_app

    running = RunningHTTP(None)
    settings = psc_settings(settings, standin, psc_redirect_uri=f"{running.base_url}/pro/connexion/retour")
    credentials = await demo.seed(engine, settings, certificates=False)
    running.server.config.app = build_app(engine, settings)
    await running.start()
    try:
        yield Portal(running.base_url, settings, engine, credentials or {}, running.server.config.app)
    finally:
        await running.stop()
