"""Database engine, session factory, the declarative base and migrations.

SQLite is the embedded default, PostgreSQL the production store; both are reached through
SQLAlchemy's async engine (aiosqlite, asyncpg). Every component declares its tables on the
one `Base` below so that Alembic sees the whole schema, but only the owning component's
service module reads or writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import MetaData, Table, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every table; constraint names are stable so migrations can refer to them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # Every model here is mapped to a plain Table (no mapping to joins or selects), so
    # `Model.__table__.insert()` is the table's own; typed so, not as any FromClause.
    __table__: ClassVar[Table]


def inserted_id(result: Any) -> int:
    """The new row's integer primary key from an INSERT's result.

    SQLAlchemy types `inserted_primary_key` as optional (an executemany has none); an
    INSERT of one row always has it, and saying so here keeps the callers' types exact.
    """
    key = result.inserted_primary_key
    if key is None or key[0] is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(key[0])


def normalise_url(url: str) -> str:
    """Give a plain `sqlite:///` or `postgresql://` URL its async driver.

    Operators write the URL their tools know (`postgresql://user@host/db`); the async
    engine needs the driver named. libpq's multi-host form
    (`postgresql://user@h1:5432,h2:5433/db?target_session_attrs=read-write`, what a Patroni
    cluster is reached with) becomes SQLAlchemy's (`?host=h1:5432&host=h2:5433`), which
    asyncpg tries in turn until one is the primary.
    """
    parsed = make_url(_multi_host(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")
    return parsed.render_as_string(hide_password=False)


def _multi_host(url: str) -> str:
    """libpq's `scheme://userinfo@h1:p1,h2:p2/db?query` as `scheme://userinfo@/db?host=h1:p1&host=h2:p2&query`."""
    from urllib.parse import quote

    scheme, separator, rest = url.partition("://")
    if not separator or not scheme.startswith("postgres"):
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if "," not in hosts:
        return url
    path, question, query = tail.partition("?")
    listed = "&".join(f"host={quote(host.strip(), safe=':[]')}" for host in hosts.split(",") if host.strip())
    return f"{scheme}://{userinfo}{at}/{path}?{listed}" + (f"&{query}" if question and query else "")


def hosts_of(parsed: Any) -> tuple[list[str], list[str]]:
    """(hosts, ports) of a PostgreSQL URL, one host or several (`?host=h:p&host=...`), for libpq's PGHOST and PGPORT."""
    listed = parsed.query.get("host")
    if not listed:
        return [parsed.host or "127.0.0.1"], [str(parsed.port or 5432)]
    hosts, ports = [], []
    for item in [listed] if isinstance(listed, str) else list(listed):
        host, _, port = str(item).rpartition(":") if ":" in str(item) else (str(item), "", "")
        hosts.append(host)
        ports.append(port or "5432")
    return hosts, ports


def is_sqlite(engine_or_url: AsyncEngine | str) -> bool:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return url.startswith("sqlite")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the one writer; synchronous=FULL makes a commit durable
    across power loss, which is what "250 OK" promises; foreign keys are off by default."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url: str, *, pool_size: int = 10, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url` (normalised), with the per-backend settings we rely on.

    `pool_size` connections are kept; up to 10 more are opened at peaks and closed when
    returned. The server passes its `database_pool_size`: under the webmail benchmark a
    pool smaller than the requests in flight reconnected (TLS included on PostgreSQL, a new
    thread and the PRAGMAs on SQLite) on every other request, and that, not the queries,
    made the slowest 1 % of pages four times slower than the median.

    No pre-ping on checkout: asyncpg's ping is BEGIN, a query and ROLLBACK, three round
    trips on every checkout, more than the one-statement read it guards. A connection the
    server dropped is still found out: its first statement fails with a disconnect error,
    the pool discards every connection opened before, that request gets an error (a "451
    try later" over SMTP) and the next one reconnects. `pool_recycle` retires connections
    before a firewall's idle timer silently cuts them.
    """
    url = normalise_url(url)
    kwargs.setdefault("pool_size", pool_size)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(url, **kwargs)


def autocommit_reads(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (same pool) whose connections run each statement on its own.

    A plain `engine.connect()` opens a transaction for its first statement and rolls it
    back on release: on PostgreSQL a page that needs one read then pays three round trips
    (BEGIN, the read, ROLLBACK). The webmail's hot pages each read one consistent thing per
    statement (a version, a list, a session), so they use this engine; anything that writes,
    or reads twice and needs both reads to agree, still uses `engine.begin()`.

    SQLite is left as it is: its driver opens no transaction for a SELECT, and switching
    an aiosqlite connection's mode costs a trip to its thread at each checkout and return.
    """
    if is_sqlite(engine):
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def sync_engine_for(engine: AsyncEngine):  # type: ignore[no-untyped-def]
    """A synchronous engine on the same SQLite file, with the same pragmas (for a writer thread)."""
    from sqlalchemy import create_engine as create_sync_engine

    url = engine.url.set(drivername="sqlite")
    sync = create_sync_engine(url, pool_size=1, max_overflow=0)
    event.listen(sync, "connect", _sqlite_on_connect)
    return sync


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def import_all_models() -> None:
    """Import every component's models so `Base.metadata` holds the whole schema."""
    import caducee.agenda.models  # noqa: F401
    import caducee.annuaire.models  # noqa: F401
    import caducee.campaigns.models  # noqa: F401
    import caducee.dossier.models  # noqa: F401
    import caducee.gateway.models  # noqa: F401
    import caducee.history.models  # noqa: F401
    import caducee.identity.models  # noqa: F401
    import caducee.jobs.models  # noqa: F401
    import caducee.limits.models  # noqa: F401
    import caducee.mailbox.models  # noqa: F401
    import caducee.traces.models  # noqa: F401
    import caducee.webmail.models  # noqa: F401


def migration_locations() -> list[Path]:
    """Where revisions live: the trunk (`migrations/versions`, the schema before the component
    walls, several components per revision) and each component's own `migrations/` folder.

    A component adds its revisions on its own Alembic branch (`branch_labels = ("agenda",)`,
    `depends_on` the trunk revision whose tables it refers to), so components evolve their
    schemas without one shared, conflicting chain; the database is at `heads`, one per branch.
    """
    root = Path(__file__).parent
    return [root / "migrations" / "versions", *sorted(path for path in root.glob("*/migrations") if path.is_dir())]


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("version_locations", " ".join(str(path) for path in migration_locations()))
    config.set_main_option("path_separator", "space")
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "heads") -> None:
    """Apply migrations up to `revision`, every branch's head by default (blocking; call
    from a thread inside a loop)."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revisions the database is at (one per branch, comma-separated), or None when it
    was never migrated."""
    import asyncio

    from alembic.runtime.migration import MigrationContext

    async def read() -> tuple[str, ...]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_heads())
        finally:
            await engine.dispose()

    heads = asyncio.run(read())
    return ",".join(sorted(heads)) if heads else None


def expected_heads(url: str) -> tuple[str, ...]:
    """The heads of every branch the code knows: what `current_revision` must say after `upgrade`."""
    from alembic.script import ScriptDirectory

    return tuple(sorted(ScriptDirectory.from_config(_alembic_config(url)).get_heads()))


class SchemaNotCurrent(RuntimeError):
    """The database is not at the revisions this code expects: `caducee db upgrade` first."""


def check_schema_current(url: str) -> None:
    """Raise SchemaNotCurrent unless the database is at every branch's head.

    `caducee serve` checks instead of migrating: with several nodes starting together, each
    running migrations raced (and a node of an older version would have migrated nothing and
    served a schema it does not know). Migrations are `caducee db upgrade`, run once, under
    PostgreSQL's advisory lock.
    """
    current = current_revision(url)
    expected = ",".join(expected_heads(url))
    if current is None or pending_revisions(url, tuple(current.split(","))):
        raise SchemaNotCurrent(
            f"the database schema is at {current or '(nothing: empty database)'}, this version of Caducée needs {expected}: "
            "run `caducee db upgrade` (once, from one node) before `caducee serve`"
        )


def pending_revisions(url: str, current: tuple[str, ...]) -> list[str]:
    """The revisions `upgrade` would apply to a database at `current` (a trunk revision other
    branches depend on is not itself a current head, so heads are not compared as strings)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(url))
    known = {revision.revision for revision in script.walk_revisions()}
    if any(revision not in known for revision in current):  # a newer version migrated it: not ours to serve
        return [revision for revision in current if revision not in known]
    applied: set[str] = set()
    todo = list(current)
    while todo:  # every revision the current ones stand on: down revisions and dependencies
        revision = script.revision_map.get_revision(todo.pop())
        if revision is not None and revision.revision not in applied:
            applied.add(revision.revision)
            todo.extend(revision._all_down_revisions)
    return sorted(known - applied)
