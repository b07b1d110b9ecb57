"""What the stand-in knows: realms, clients, professionals, lifetimes (read from JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class StandinClient:
    client_id: str
    client_secret: str | None  # None: a public client (a native mail client or practice software), PKCE only
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()  # what its access tokens name in `aud` (Keycloak's audience mapper); empty: itself

    def audiences(self) -> list[str]:
        return list(self.audience) or [self.client_id]

    def allows_redirect(self, uri: str, registered: tuple[str, ...]) -> bool:
        """Exact match, or RFC 8252 section 7.3: a loopback redirect URI matches on any port."""
        if uri in registered:
            return True
        asked = urlsplit(uri)
        for candidate in registered:
            known = urlsplit(candidate)
            loopback = known.hostname in {"127.0.0.1", "::1", "localhost"} and known.scheme == "http"
            if loopback and (asked.scheme, asked.hostname, asked.path, asked.query) == (
                known.scheme,
                known.hostname,
                known.path,
                known.query,
            ):
                return True
        return False


@dataclass(frozen=True)
class StandinUser:
    national_id: str
    civility: str  # code, e.g. "DR", "M", "MME"
    first_name: str
    last_name: str
    profession_code: str
    profession_label: str
    category: str = "C"
    savoir_faire: str = ""
    structure_name: str = ""
    structure_id: str = ""
    siret: str = ""
    finess: str = ""
    postcode: str = ""
    email: str = ""

    @property
    def label(self) -> str:
        return f"{self.first_name} {self.last_name} — {self.profession_label}"


@dataclass(frozen=True)
class StandinConfig:
    realms: tuple[str, ...]
    clients: tuple[StandinClient, ...]
    users: tuple[StandinUser, ...]
    access_token_seconds: int = 300
    code_seconds: int = 60
    userinfo_format: str = "json"  # "json" or "jwt" (PSC answers either)
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, client_id: str) -> StandinClient | None:
        return next((client for client in self.clients if client.client_id == client_id), None)

    def user(self, national_id: str) -> StandinUser | None:
        return next((user for user in self.users if user.national_id == national_id), None)


def load(path: Path) -> StandinConfig:
    document = json.loads(path.read_text(encoding="utf-8"))
    clients = tuple(
        StandinClient(
            client_id=item["client_id"],
            client_secret=item.get("client_secret"),
            redirect_uris=tuple(item.get("redirect_uris", ())),
            post_logout_redirect_uris=tuple(item.get("post_logout_redirect_uris", ())),
            audience=tuple(item.get("audience", ())),
        )
        for item in document["clients"]
    )
    users = tuple(StandinUser(**item) for item in document["users"])
    return StandinConfig(
        realms=tuple(document.get("realms", ["esante-wallet"])),
        clients=clients,
        users=users,
        access_token_seconds=int(document.get("access_token_seconds", 300)),
        code_seconds=int(document.get("code_seconds", 60)),
        userinfo_format=str(document.get("userinfo_format", "json")),
    )


def dump(config: StandinConfig) -> dict[str, Any]:
    """The JSON form `load` reads (the demo and the tests write it)."""
    return {
        "realms": list(config.realms),
        "clients": [
            {
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "redirect_uris": list(client.redirect_uris),
                "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
                "audience": list(client.audience),
            }
            for client in config.clients
        ],
        "users": [user.__dict__ for user in config.users],
        "access_token_seconds": config.access_token_seconds,
        "code_seconds": config.code_seconds,
        "userinfo_format": config.userinfo_format,
    }
