"""The guarded executor: the one path by which SQL reaches a database.

Layers, each enough on its own for writes: the parsed-tree check (validate.py: one read-only statement, no
forbidden nodes or functions), then an engine opened read-only (DuckDB read_only + external access off +
locked config; SQLite mode=ro; PostgreSQL and MariaDB read-only transactions), then limits that stop the
query: a statement timeout, a row cap that sets `truncated`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ValidationError
from .validate import parse_one_query


@dataclass
class Result:
    sql: str
    df: object             # pandas.DataFrame
    truncated: bool
    seconds: float

    @property
    def row_count(self) -> int:
        return len(self.df)


def guard(warehouse, sql: str, settings) -> str:
    """Re-check the read-only rules in the warehouse's dialect; every caller that runs SQL goes through here."""
    parse_one_query(sql, read=warehouse.dialect, max_chars=settings.max_sql_chars)
    return sql


def run_checked(warehouse, sql: str, settings) -> Result:
    """Run SQL that validate() already accepted, through guard()."""
    return _run(warehouse, guard(warehouse, sql, settings), settings)


def _run(warehouse, sql: str, settings) -> Result:
    import pandas as pd
    t0 = time.perf_counter()
    columns, rows, truncated = warehouse.run(sql, row_limit=settings.row_limit, timeout=settings.statement_timeout)
    df = pd.DataFrame.from_records(rows, columns=_unique(columns)) if rows else pd.DataFrame(columns=_unique(columns))
    return Result(sql, df, truncated, time.perf_counter() - t0)


def _unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in columns:
        n = seen.get(c, 0)
        seen[c] = n + 1
        out.append(c if n == 0 else f"{c}_{n}")
    return out


def execute(sql: str, db=None, *, settings=None) -> Result:
    """Run one read-only query through the guarded path (what ask() uses). Raises Nl2SqlError subclasses.

    The SQL is read in the warehouse's own dialect.
    """
    from .api import default_pipeline
    pipe = default_pipeline(settings)
    wh = pipe.warehouse(db)
    if not isinstance(sql, str):
        raise ValidationError("The SQL must be a string.", hint="Pass one SELECT statement as text.")
    return run_checked(wh, sql, pipe.settings)
