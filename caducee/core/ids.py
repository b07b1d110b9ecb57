"""Column types shared by every component's tables."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from sqlalchemy import BigInteger, Integer

# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid alias (64-bit
# already), and only the exact type name INTEGER makes it one.
BigId = BigInteger().with_variant(Integer(), "sqlite")

MAX_ROW_ID = 2**63 - 1  # the largest id either database can hold

# The type of every id a URL carries. Bounded here, so that a number no row can have
# (99999999999999999999, -1) is refused by validation, which answers 404 for a path that
# names nothing (webmail.errors), instead of reaching a driver that overflows into a 500.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
