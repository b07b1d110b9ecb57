"""Helpers the benchmark scripts share: loopback ports and throw-away PostgreSQL databases."""

from __future__ import annotations

import asyncio
import socket
import uuid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def pg_admin(url: str, statement: str) -> None:
    """Run one administrative statement (CREATE/DROP DATABASE) on the server of `url`."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from caducee.db import normalise_url

    parsed = make_url(normalise_url(url))
    conn = await asyncpg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username, database=parsed.database)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_pg_database(url: str, prefix: str) -> tuple[str, str]:
    """(name, URL) of a new database, migrated, on the server of `url`; drop it with drop_pg_database."""
    from sqlalchemy.engine import make_url

    from caducee.db import normalise_url, upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg_admin(url, f'CREATE DATABASE "{name}"'))
    database = make_url(normalise_url(url)).set(database=name).render_as_string(hide_password=False)
    upgrade(database)  # as an operator does: `caducee db upgrade`, then `caducee serve` (which only checks)
    return name, database


def drop_pg_database(url: str, name: str) -> None:
    asyncio.run(pg_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
