"""One set-based upsert from a staging table into a directory table, for either backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

NOT_COMPARED = {"updated_at", "seen_in_run"}  # bookkeeping: a change of these alone is no change


def upsert_sql(
    dialect: str,
    *,
    target: str,
    key: str,
    source: str,
    source_key: str,
    columns: Mapping[str, str],
    update: Sequence[str],
    keep_when: str | None = None,
    source_filter: str = "true",
    skip_unchanged: bool = False,
) -> str:
    """`INSERT INTO target SELECT ... FROM source ON CONFLICT (key) DO UPDATE ...`.

    `columns` maps each target column to its SQL expression over the staging row `x`.
    A key may appear on several lines (a professional with several mailboxes): PostgreSQL
    refuses to update one row twice in a statement, so its source is reduced to the last
    line per key with DISTINCT ON; SQLite applies the rows in file order (the staging
    table's primary key), so the last line wins there too. `keep_when` guards the update
    (e.g. never rewrite our own mailboxes). With `skip_unchanged`, a row whose updated
    columns (bookkeeping aside) already hold the file's values is left alone, so a
    daily re-import of a file that barely changed writes (and leaves behind as dead rows
    and WAL, on PostgreSQL) only what changed.
    """
    names = ", ".join(columns)
    expressions = ", ".join(columns.values())
    if dialect == "postgresql":
        select = (
            f"SELECT DISTINCT ON ({source_key}) {expressions} FROM {source} x WHERE {source_filter} ORDER BY {source_key}, x.line_no DESC"
        )
    else:
        select = f"SELECT {expressions} FROM {source} x WHERE {source_filter} ORDER BY x.line_no"
    assignments = ", ".join(f"{column} = excluded.{column}" for column in update)
    conditions = [keep_when] if keep_when else []
    if skip_unchanged:
        distinct = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"  # both null-safe
        compared = [column for column in update if column not in NOT_COMPARED]
        conditions.append("(" + " OR ".join(f"{target}.{c} {distinct} excluded.{c}" for c in compared) + ")")
    guard = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"INSERT INTO {target} ({names}) {select} ON CONFLICT ({key}) DO UPDATE SET {assignments}{guard}"


def staging_ddl(dialect: str, table: str, columns: Sequence[tuple[str, str]]) -> str:
    """The staging table: on SQLite `line_no` is the rowid, so reading in file order is free;
    on PostgreSQL no index at all, so COPY runs at full speed."""
    parts = []
    for name, sql_type in columns:
        if name == "line_no" and dialect != "postgresql":
            parts.append("line_no INTEGER PRIMARY KEY")
        else:
            parts.append(f"{name} {sql_type}")
    return f"CREATE TEMPORARY TABLE {table} ({', '.join(parts)})"
