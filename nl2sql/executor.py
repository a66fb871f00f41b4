"""The guarded executor: the one path by which SQL reaches a database (ask(), the app, nl2sql.execute()).

Layers, each enough on its own for writes:
1. input caps (validate.check_sql_text): length, NUL and hidden characters, nesting depth;
2. the parsed-tree allowlist (validate.parse_one_query): one SELECT / set operation, no statement node anywhere;
3. the function allowlist per dialect (validate.check_functions; NFKC + casefold, size arguments capped) and
   the table allowlist (validate.check_tables: the connected schema, CTEs in scope, NL2SQL_EXTRA_TABLES).
   The text that runs is the checked tree written back out by sqlglot, comments dropped, and that text is
   parsed and checked once more, so the engine runs exactly what was checked (no parser differentials such
   as MySQL's executable comments or names that case-map to others);
4. the engine, read-only by construction (one module per engine in nl2sql/engines/: DuckDB read_only +
   external access off + locked config + one SELECT statement per call; SQLite mode=ro + an authorizer
   allowing reads and allowlisted functions + no ATTACH; PostgreSQL a read-only transaction and a server-side
   cursor; MariaDB a read-only transaction without multi-statements; sessions left with state discarded);
5. limits that stop the query: statement timeout (DuckDB and SQLite files in a worker process killed past
   it or past the memory limit), row cap and result-size cap that set `truncated`.

The module is executor.py rather than execute.py so that `nl2sql.execute` stays the public function.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlglot.errors import SqlglotError

from .errors import UnsafeSQLError, ValidationError
from .validate import FunctionPolicy, TablePolicy, check_text_that_runs, parse_one_query


@dataclass
class Result:
    sql: str
    df: object             # pandas.DataFrame
    truncated: bool
    seconds: float

    @property
    def row_count(self) -> int:
        return len(self.df)


# Test-only switch: tests/safety turns the SQL checks (layers 1-3) off to prove the engine layer holds alone.
# Deliberately not a setting: no environment variable or argument reaches it.
_CHECK_SQL = True


def guard(warehouse, sql: str, settings) -> str:
    """Re-check the read-only rules in the warehouse's dialect; every caller that runs SQL goes through here.

    Returns the SQL to run: the checked tree written back out in the warehouse's dialect, without comments.
    That text is parsed once more and checked again (functions by the names written there, tables against
    the connected schema), so what runs is exactly what was checked.
    """
    if not _CHECK_SQL:
        return sql
    dialect = warehouse.dialect
    functions = FunctionPolicy.from_settings(dialect, settings)
    tree = parse_one_query(sql, read=dialect, max_chars=settings.max_sql_chars, functions=functions)
    try:
        out = tree.sql(dialect=writer_dialect(warehouse), comments=False)
    except (SqlglotError, RecursionError) as e:
        raise ValidationError(f"The SQL cannot be written for {dialect}: {str(e).strip()[:200]}",
                              hint="Simplify the query.") from None
    try:
        check_text_that_runs(out, dialect, functions, _tables(warehouse, settings))
    except UnsafeSQLError:
        # a table created since the schema was read: read it again (rate-limited) before refusing
        check_text_that_runs(out, dialect, functions, _tables(warehouse, settings, refresh=True))
    return out


def writer_dialect(warehouse) -> str:
    """The sqlglot dialect that writes SQL for this warehouse (MariaDB differs from MySQL in a few functions)."""
    return "mariadb" if getattr(warehouse, "is_mariadb", False) else warehouse.dialect


def _tables(warehouse, settings, *, refresh: bool = False) -> TablePolicy:
    names, schemas = warehouse.table_allowlist(refresh=refresh)
    return TablePolicy.build(names, schemas, getattr(settings, "extra_tables", ""))


def run_checked(warehouse, sql: str, settings) -> Result:
    """Run SQL that validate() already accepted, through guard()."""
    return _run(warehouse, guard(warehouse, sql, settings), settings)


def _run(warehouse, sql: str, settings) -> Result:
    import pandas as pd
    t0 = time.perf_counter()
    # functions nl2sql did not vet may leave server-side state (a backup, a lock): such sessions are not reused
    unvetted = not _CHECK_SQL or bool(getattr(settings, "extra_functions", "").strip())
    columns, rows, truncated = warehouse.run(sql, row_limit=settings.row_limit, timeout=settings.statement_timeout,
                                             **({"fresh_session": True} if unvetted else {}))
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
