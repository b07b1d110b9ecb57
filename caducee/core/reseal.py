"""Re-sealing the sealed columns of a table under the current key, in small batches.

Why batches of short transactions: `caducee keys rotate` runs beside serving nodes, over
tables of millions of rows; each batch holds its rows for milliseconds, and a row another
process rewrote meanwhile (a summary computed again) is left alone, because the update only
applies where the column still holds the value that was read. Each component calls this for
its own tables (the walls: nobody else names them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Column, Table, and_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine


class Resealer(Protocol):
    def is_current(self, sealed: bytes) -> bool: ...

    def reseal(self, sealed: bytes) -> bytes: ...


async def reseal_table(engine: AsyncEngine, table: Table, columns: Sequence[str], cipher: Resealer, *, batch: int = 200) -> int:
    """Re-seal every value of `columns` not under the current key; the number of rows changed."""
    key: Column[Any] = next(iter(table.primary_key.columns))
    sealed = [table.c[name] for name in columns]
    last: Any = None
    changed = 0
    while True:
        query = select(key, *sealed).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        async with engine.begin() as conn:
            rows = (await conn.execute(query)).all()
            for row in rows:
                old = {column.name: row._mapping[column.name] for column in sealed}
                new = {name: cipher.reseal(value) for name, value in old.items() if value is not None and not cipher.is_current(value)}
                if not new:
                    continue
                unchanged = and_(key == row[0], *(table.c[name] == old[name] for name in new))
                result = await conn.execute(update(table).where(unchanged).values(**new))
                changed += int(result.rowcount or 0)
        if len(rows) < batch:
            return changed
        last = rows[-1][0]
