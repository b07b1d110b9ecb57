"""Column types shared by every component's tables."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer

# 64-bit ids on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is the rowid alias (64-bit
# already), and only the exact type name INTEGER makes it one.
BigId = BigInteger().with_variant(Integer(), "sqlite")
