"""Settings: defaults, TOML file, environment, precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from caducee.config import Settings, SettingsError, describe_settings, load_settings


def test_defaults_and_sqlite_url(tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path)
    assert settings.http_port == 8080 and settings.max_message_size == 25 * 1024 * 1024
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/caducee.sqlite3"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "caducee.toml"
    config.write_text('[caducee]\nhttp_port = 9000\nlocal_domains = ["a.fr", "b.fr"]\nlog_level = "DEBUG"\n')
    env = {"CADUCEE_CONFIG": str(config), "CADUCEE_HTTP_PORT": "9100", "CADUCEE_DATABASE_URL": "postgresql://u@h/db"}
    settings = load_settings(environ=env)
    assert settings.http_port == 9100 and settings.local_domains == ["a.fr", "b.fr"] and settings.log_level == "DEBUG"
    assert settings.effective_database_url == "postgresql+asyncpg://u@h/db"
    assert load_settings(environ=env, http_port=9200).http_port == 9200
    assert load_settings(environ={"CADUCEE_LOCAL_DOMAINS": "x.fr, y.fr"}).local_domains == ["x.fr", "y.fr"]


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("http_prot = 1\n", {}, "unknown setting 'http_prot'"),
        ("http_port = [\n", {}, "caducee.toml"),
        ("", {"CADUCEE_HTTP_PORT": "eighty"}, "setting 'http_port'"),
        ("max_message_size = 0\n", {}, "must be positive"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "caducee.toml"
    config.write_text(content)
    with pytest.raises(SettingsError, match=message):
        load_settings(config_file=config, environ=env)


def test_missing_file_and_bad_database() -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config_file=Path("/nonexistent/caducee.toml"), environ={})
    with pytest.raises(ValueError, match="unsupported database"):
        _ = Settings(database_url="mysql://x/y").effective_database_url


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for _key, env_name, _default, _help in describe_settings():
        assert env_name in readme, f"{env_name} is not documented in README.md"


def test_every_setting_is_read_somewhere() -> None:
    """No documented setting without effect: each field of Settings is read (as an attribute,
    or by name through getattr) by some module other than config.py."""
    import ast
    import dataclasses
    from pathlib import Path

    from caducee.config import Settings

    package = Path(__file__).resolve().parent.parent / "caducee"
    used: set[str] = set()
    for path in package.rglob("*.py"):
        if path.name == "config.py" and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)
    unread = [field.name for field in dataclasses.fields(Settings) if field.name not in used]
    assert not unread, f"settings nobody reads: {unread}"
