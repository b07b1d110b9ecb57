"""`caducee backup DIR` and `caducee restore DIR`: the database, the keys and the certificates
a node needs, written while it serves, and put back into an empty database and data directory.

Why these tools: SQLite's online backup API copies a consistent database while writers go on
(a file copy of a database in WAL mode can be torn); `pg_dump --format=directory` reads one
snapshot of PostgreSQL without stopping anyone, and `pg_restore` puts it back. Beside the
database the backup holds the data directory (the master key file when the key lives there,
the test PKI and the mailboxes' held keys, the OpenPGP keyring, the history checkpoints...)
and every file the settings point at outside it (TLS and S/MIME certificates and keys, CRLs).

A backup is as secret as the data directory: it holds private keys and, unless the master
key comes from `CADUCEE_MASTER_KEY`, the master key itself. The manifest records the master
key's fingerprint (never the key), the Alembic heads and the rows of every table: `restore`
refuses a target that is not empty, or whose master key does not match, and says after
restoring whether every table has its rows back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select, table, text
from sqlalchemy.engine import make_url

from caducee import __version__, db
from caducee.config import Settings
from caducee.crypto.atrest import load_master_key

MANIFEST = "manifest.json"
SQLITE_FILE = "caducee.sqlite3"
PG_DIRECTORY = "database"
DATA = "data"
FILES = "files"
# Settings naming files a node needs that may live outside the data directory.
FILE_SETTINGS = (
    "tls_cert",
    "tls_key",
    "trust_anchors",
    "relay_client_cert",
    "relay_client_key",
    "smime_cert",
    "smime_key",
    "smime_keys_dir",
    "crl_files",
    "agenda_prevention_table",
)


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; the message says why and what to do."""


def key_fingerprint(key: bytes) -> str:
    """Names a master key without revealing it (a hash of a 256-bit random key)."""
    return hashlib.sha256(b"caducee master key fingerprint\0" + key).hexdigest()[:32]


def libpq_environment(url: str) -> dict[str, str]:
    """PG* variables for pg_dump and pg_restore from a database URL (multi-host too): the
    password goes in the environment, never on a command line others can read in `ps`."""
    parsed = make_url(db.normalise_url(url))
    hosts, ports = db.hosts_of(parsed)
    env = {"PGDATABASE": parsed.database or "postgres", "PGHOST": ",".join(hosts), "PGPORT": ",".join(ports)}
    if parsed.username:
        env["PGUSER"] = parsed.username
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    attrs = parsed.query.get("target_session_attrs")
    if attrs:
        env["PGTARGETSESSIONATTRS"] = str(attrs)
    return env


async def table_rows(url: str) -> dict[str, int]:
    """Rows of every table in the database (the manifest's and restore's check)."""
    engine = db.create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            names = sorted(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
            return {name: int((await conn.execute(select(func.count()).select_from(table(name)))).scalar_one()) for name in names}
    finally:
        await engine.dispose()


async def _is_empty(url: str) -> bool:
    engine = db.create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            if db.is_sqlite(url):
                found = (await conn.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'table'"))).scalar_one()
            else:
                found = (await conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"))).scalar_one()
            return int(found) == 0
    finally:
        await engine.dispose()


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_tree(source: Path, target: Path, *, skip: set[Path] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Regular files and folders only (no gpg-agent sockets), modes kept; the files copied, relative."""
    copied = []
    for path in sorted(source.rglob("*")):
        if path in skip or any(parent in skip for parent in path.parents):
            continue
        relative = path.relative_to(source)
        if path.is_dir() and not path.is_symlink():
            (target / relative).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / relative)
            copied.append(str(relative))
    return copied


def _prepare_target(directory: Path) -> None:
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty: a backup goes into a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # private keys and the master key inside


def backup(settings: Settings, directory: Path) -> dict[str, Any]:
    """Write a backup of the node's database, data directory and configured files into
    `directory` (new or empty) while the node serves; the manifest is returned."""
    url = settings.effective_database_url
    _prepare_target(directory)  # first: a wrong directory is said before anything is read
    started = datetime.now(UTC)
    key = load_master_key(settings.data_dir)
    from_environment = bool(os.environ.get("CADUCEE_MASTER_KEY"))
    if db.is_sqlite(url) and not _sqlite_path(url).exists():
        raise BackupError(f"no database at {_sqlite_path(url)}")
    heads = db.current_revision(url)
    if heads is None:
        raise BackupError("the database was never migrated (`caducee db upgrade`): there is nothing to back up")
    if db.is_sqlite(url):
        source = _sqlite_path(url)
        with sqlite3.connect(source) as live, sqlite3.connect(directory / SQLITE_FILE) as copy:
            live.backup(copy, pages=4096)  # in steps: writers go on between them, and each step is consistent with the last
        database = {"kind": "sqlite", "file": SQLITE_FILE}
        rows_url = f"sqlite:///{directory / SQLITE_FILE}"
        skip = {source, source.with_name(source.name + "-wal"), source.with_name(source.name + "-shm")}
    else:
        _run(["pg_dump", "--format=directory", "--compress=6", "--no-owner", "--file", str(directory / PG_DIRECTORY)], url, "pg_dump")
        database = {"kind": "postgresql", "directory": PG_DIRECTORY, "tool": _version("pg_dump")}
        rows_url = ""
        skip = set()
    data_files = _copy_tree(settings.data_dir, directory / DATA, skip=skip) if settings.data_dir.exists() else []
    if from_environment:
        (directory / DATA / "master.key").unlink(missing_ok=True)  # not the key in use: the environment's is
        data_files = [name for name in data_files if name != "master.key"]
    outside = _copy_configured_files(settings, directory / FILES)
    manifest: dict[str, Any] = {
        "caducee": __version__,
        "created_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "database": database,
        "alembic_heads": heads,
        "master_key": {
            "fingerprint": key_fingerprint(key),
            "source": "environment (CADUCEE_MASTER_KEY): not in this backup" if from_environment else f"{DATA}/master.key",
        },
        "data_files": data_files,
        "configured_files": outside,
    }
    if rows_url:
        manifest["rows"] = asyncio.run(table_rows(rows_url))
    else:
        manifest["rows"] = _pg_dump_rows(directory / PG_DIRECTORY)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _copy_configured_files(settings: Settings, target: Path) -> dict[str, list[dict[str, str]]]:
    """Every file a setting names (outside the data directory or not), under files/<setting>/."""
    copied: dict[str, list[dict[str, str]]] = {}
    for name in FILE_SETTINGS:
        value = getattr(settings, name)
        for number, item in enumerate(value if isinstance(value, list) else [value] if value else []):
            path = Path(item)
            place = target / name / str(number)
            if path.is_dir():
                files = _copy_tree(path, place)
                copied.setdefault(name, []).append({"path": str(path.resolve()), "kind": "directory", "files": ",".join(files)})
            elif path.is_file():
                place.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, place / path.name)
                copied.setdefault(name, []).append({"path": str(path.resolve()), "kind": "file", "sha256": _sha256(path)})
            else:
                raise BackupError(f"setting {name!r} names {path}, which does not exist")
    return copied


def _pg_dump_rows(directory: Path) -> dict[str, int]:
    """The rows pg_dump wrote for each table, read back from its table of contents and data
    files (so the count is the snapshot's, not the live database's of a moment later)."""
    listing = subprocess.run(["pg_restore", "--list", str(directory)], capture_output=True, text=True, check=True).stdout
    rows: dict[str, int] = {}

    for line in listing.splitlines():
        parts = line.split()
        # "3456; 0 16390 TABLE DATA public messages postgres"
        if len(parts) >= 7 and parts[3:5] == ["TABLE", "DATA"]:
            dump_id, table = parts[0].rstrip(";"), parts[6]
            for candidate in (directory / f"{dump_id}.dat.gz", directory / f"{dump_id}.dat"):
                if candidate.exists():
                    opener = gzip.open if candidate.suffix == ".gz" else open
                    with opener(candidate, "rb") as handle:  # COPY's text format: one line a row, then "\."
                        rows[table] = sum(1 for _ in iter(handle.readline, b"\\.\n"))
    return rows


def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def _run(command: list[str], url: str, what: str) -> None:
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} is not installed (PostgreSQL's client tools: Debian's postgresql-client)")
    result = subprocess.run(command, env={**os.environ, **libpq_environment(url)}, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


@dataclasses.dataclass
class RestoreReport:
    rows: dict[str, int]
    expected: dict[str, int]
    files: int

    @property
    def missing(self) -> dict[str, tuple[int, int]]:
        return {table: (count, self.rows.get(table, 0)) for table, count in self.expected.items() if self.rows.get(table, 0) != count}


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise BackupError(f"{path} does not exist: {directory} is not a Caducée backup")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BackupError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or "database" not in manifest or "master_key" not in manifest:
        raise BackupError(f"{path} is not a Caducée backup manifest")
    return manifest


def restore(settings: Settings, directory: Path) -> RestoreReport:
    """Put a backup back into the node's (empty) database and data directory."""
    manifest = read_manifest(directory)
    url = settings.effective_database_url
    kind = manifest["database"]["kind"]
    if (kind == "sqlite") != db.is_sqlite(url):
        raise BackupError(
            f"this backup is of a {kind} database; the target is {make_url(url).get_backend_name()}: restore into the same kind"
        )
    if db.is_sqlite(url):
        target = _sqlite_path(url)
        if target.exists() and not asyncio.run(_is_empty(url)):
            raise BackupError(f"{target} is not empty: restore goes into an empty database")
    elif not asyncio.run(_is_empty(url)):
        raise BackupError(f"database {make_url(url).database!r} is not empty: restore goes into an empty database (create a new one)")
    _check_data_dir(settings.data_dir, directory / DATA)
    if key_fingerprint(_key_after_restore(settings, directory / DATA)) != manifest["master_key"]["fingerprint"]:
        raise BackupError(
            "the master key in effect is not the one of the backup (its source: "
            f"{manifest['master_key']['source']}): set CADUCEE_MASTER_KEY to the backup's key; nothing was restored"
        )
    files = _restore_data_dir(directory / DATA, settings.data_dir)
    files += _restore_configured_files(settings, directory / FILES, manifest.get("configured_files", {}))
    if kind == "sqlite":
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(directory / manifest["database"]["file"]) as source, sqlite3.connect(target) as copy:
            source.backup(copy)
    else:
        database_name = libpq_environment(url)["PGDATABASE"]
        command = ["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction", "--dbname", database_name]
        _run([*command, str(directory / manifest["database"]["directory"])], url, "pg_restore")
    rows = asyncio.run(table_rows(url))
    return RestoreReport(rows, {k: int(v) for k, v in manifest.get("rows", {}).items()}, files)


def _key_after_restore(settings: Settings, source: Path) -> bytes:
    """The master key the node will use once the backup's data directory is in place."""
    for directory in (source, settings.data_dir):
        if os.environ.get("CADUCEE_MASTER_KEY") or (directory / "master.key").is_file():
            return load_master_key(directory)
    raise BackupError("the backup holds no master key and CADUCEE_MASTER_KEY is not set: set it to the backup's key")


def _check_data_dir(data_dir: Path, source: Path) -> None:
    """Refuse before anything is written when a file of the backup would replace a different one."""
    if not source.exists():
        return
    for path in source.rglob("*"):
        existing = data_dir / path.relative_to(source)
        if path.is_file() and existing.is_file() and _sha256(existing) != _sha256(path):
            raise BackupError(f"{existing} exists and differs from the backup's: restore into a new data directory")


def _restore_data_dir(source: Path, data_dir: Path) -> int:
    if not source.exists():
        return 0
    data_dir.mkdir(parents=True, exist_ok=True)
    return len(_copy_tree(source, data_dir))


def _restore_configured_files(settings: Settings, source: Path, recorded: dict[str, list[dict[str, str]]]) -> int:
    """Each configured file back where the restoring node's settings name it, unless the same
    file is there already; a different file there is an error, never overwritten."""
    restored = 0
    for name, items in recorded.items():
        value = getattr(settings, name)
        targets = value if isinstance(value, list) else [value] if value else []
        for number, item in enumerate(items):
            if number >= len(targets):
                raise BackupError(f"the backup has a file for setting {name!r} ({item['path']}); set {name!r} to where it goes")
            target, place = Path(targets[number]), source / name / str(number)
            if item["kind"] == "directory":
                restored += len(_copy_tree(place, target))
                continue
            backed_up = place / Path(item["path"]).name
            if target.exists():
                if _sha256(target) != item["sha256"]:
                    raise BackupError(f"{target} (setting {name!r}) exists and differs from the backup's {item['path']}")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(backed_up, target)
            restored += 1
    return restored
