"""docker-compose.yml and the Dockerfile say only true things: every environment variable
they give Caducée is a real setting, every command a real `caducee` command, every file the
nodes are pointed at is one `caducee pki init` writes, and the health checks ask /healthz.
(These machines have no container engine: the topology itself runs in tests/test_roles.py,
tests/test_backup.py and `make soak`, as docs/deployment.md says.)"""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from caducee.cli import build_parser
from caducee.config import ENV_PREFIX, Settings, describe_settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
EXTRA = {"CADUCEE_MASTER_KEY", "CADUCEE_CONFIG"}  # read outside Settings (crypto.atrest, config's file lookup)
SAMPLE = {"POSTGRES_PASSWORD": "mot-de-passe", "CADUCEE_MASTER_KEY": base64.b64encode(bytes(range(32))).decode()}
SETTINGS_ENV = {env for _key, env, _default, _help in describe_settings()}


def substitute(value: str) -> str:
    """Compose's `${NAME:?message}` / `${NAME}` with sample values (as an operator's .env gives them)."""
    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", lambda match: SAMPLE[match.group(1)], value)


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def caducee_services() -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose()["services"].items() if service.get("build") == "."}


def test_the_compose_file_has_the_topology_of_the_design() -> None:
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    roles = {name: service["command"] for name, service in caducee_services().items() if service["command"][0] == "serve"}
    given = {role for command in roles.values() for role in command[command.index("--role") + 1].split(",")}
    assert given == {"smtp", "imap", "http", "relay", "jobs"}, "every role runs on some node"
    assert len(roles) >= 2, "several nodes"
    declared = set(compose()["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            assert mount.split(":")[0] in declared, f"{name}: volume {mount} is not declared"
        for needed in service.get("depends_on", {}) or {}:
            assert needed in services, f"{name} depends on {needed}, which is not a service"
    assert all("certificates:/etc/caducee/pki" in " ".join(s["volumes"]) for s in caducee_services().values()), "the shared certificates"


@pytest.mark.parametrize("name", sorted(caducee_services()))
def test_every_command_is_a_caducee_command(name: str) -> None:
    command = caducee_services()[name]["command"]
    try:
        arguments = build_parser().parse_args(command)
    except SystemExit as exc:
        pytest.fail(f"service {name}: `caducee {' '.join(command)}` is not a caducee command ({exc})")
    assert callable(arguments.func)
    if command[0] == "serve" and "--role" in command:
        load_settings(environ={}, roles=arguments.role)  # the roles are real ones


@pytest.mark.parametrize("name", sorted(caducee_services()))
def test_every_variable_is_a_real_setting(name: str) -> None:
    environment = {key: substitute(str(value)) for key, value in caducee_services()[name]["environment"].items()}
    unknown = [key for key in environment if key not in SETTINGS_ENV | EXTRA]
    assert not unknown, f"service {name}: {unknown} are not Caducée settings"
    assert all(key.startswith(ENV_PREFIX) for key in environment), "only Caducée's own variables"
    settings = load_settings(environ=environment)  # every value is one the setting accepts
    assert settings.database_url.startswith("postgresql://") and "@postgres:5432/" in settings.database_url
    assert base64.b64decode(environment["CADUCEE_MASTER_KEY"]) and len(base64.b64decode(environment["CADUCEE_MASTER_KEY"])) == 32


def test_the_nodes_point_at_files_pki_init_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `pki` service writes the trust space into the shared volume; every file the nodes are
    given is one it writes there."""
    from caducee.crypto.pki import development_space

    pki = caducee_services()["pki"]
    assert pki["command"][:2] == ["pki", "init"]
    mount = pki["command"][pki["command"].index("--data-dir") + 1] + "/pki"
    monkeypatch.setenv("CADUCEE_MASTER_KEY", SAMPLE["CADUCEE_MASTER_KEY"])
    space, _ = development_space(Settings(data_dir=tmp_path))
    checked = 0
    for key, value in caducee_services()["mail"]["environment"].items():
        for path in str(value).split(","):
            if path.startswith(mount + "/"):
                local = space.directory / path.removeprefix(mount + "/")
                # The held mailbox keys' folder fills as `caducee pki issue` runs; the rest exists at once.
                assert local.exists() or local == space.held_keys, f"{key}={path}: `caducee pki init` writes no such file ({local.name})"
                checked += 1
    assert checked >= 9


def _healthcheck_asks_healthz(test: list[str] | str) -> bool:
    text = " ".join(test) if isinstance(test, list) else test
    return f"127.0.0.1:{Settings().http_port}/healthz" in text


def test_health_checks_ask_healthz() -> None:
    for name, service in caducee_services().items():
        check = service["healthcheck"]
        assert check.get("disable") or _healthcheck_asks_healthz(check["test"]), f"{name}: the health check does not ask /healthz"
    assert "healthcheck" in compose()["services"]["postgres"]


def test_the_dockerfile_uses_real_settings_and_commands() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    for line in lines:
        if line.startswith("ENV "):
            names = [item.split("=", 1)[0] for item in shlex.split(line[4:])]
            assert names and all(name in SETTINGS_ENV for name in names), f"not settings: {names}"
            load_settings(environ=dict(item.split("=", 1) for item in shlex.split(line[4:])))
        if line.startswith("CMD ["):
            build_parser().parse_args(yaml.safe_load(line[4:]))
        if line.startswith("ENTRYPOINT"):
            assert yaml.safe_load(line[len("ENTRYPOINT ") :]) == ["caducee"]
        if line.startswith("HEALTHCHECK"):
            assert _healthcheck_asks_healthz(line)
    assert any(line.startswith("HEALTHCHECK") for line in lines)
