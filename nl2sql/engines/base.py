"""What every warehouse offers (the `Warehouse` interface), and what the engine families share."""
from __future__ import annotations

import re

from sqlglot import exp

from ..errors import ConfigError, ExecutionError, QueryTimeout, ResourceLimitError
from ..schema import Table
from .worker import WorkerError, fetch_capped  # noqa: F401  (fetch_capped: the one row/byte cap for every engine)


class Warehouse:
    dialect: str
    display_name: str

    def describe_tables(self) -> tuple[Table, ...]:
        raise NotImplementedError

    def sample_values(self, table: str, column: str, n: int) -> tuple[str, ...]:
        """Up to n distinct non-empty values of one column (nl2sql's own query, for the prompt)."""
        cols, rows, _ = self.run(sample_sql(self.dialect, table, column, n), row_limit=n, timeout=2.0)
        return tuple(str(r[0])[:60] for r in rows if r[0] is not None and str(r[0]).strip())

    def run(self, sql: str, *, row_limit: int, timeout: float,
            fresh_session: bool = False) -> tuple[list[str], list[tuple], bool]:
        """Run one already-validated query read-only; (columns, rows, truncated). Only execute.py calls this.

        fresh_session: the query may have left server-side state (functions nl2sql did not vet): do not
        reuse its session."""
        raise NotImplementedError

    _tables_cache: tuple | None = None
    _tables_at: float = 0.0

    def table_allowlist(self, *, refresh: bool = False) -> tuple[frozenset, frozenset]:
        """(table and view names, names of the connected schema) that the guarded executor lets queries read.

        Cached; `refresh` re-reads it (the executor does so, at most every 2 s, when a query names a table the
        cache lacks, e.g. one created after connecting)."""
        import time
        now = time.monotonic()
        if self._tables_cache is None or (refresh and now - self._tables_at > 2.0):
            self._tables_cache = self._list_tables()
            self._tables_at = now
        return self._tables_cache

    def _list_tables(self) -> tuple[frozenset, frozenset]:
        return frozenset(t.name for t in self.describe_tables()), frozenset()

    def close(self) -> None:
        pass


_QUOTE = {"sqlite": '"', "duckdb": '"', "postgres": '"', "mysql": "`"}


def sample_sql(dialect: str, table: str, column: str, n: int) -> str:
    """The query behind sample_values. Written as text for the four engines nl2sql knows (building it with
    sqlglot cost more than the query on a warm engine), through sqlglot for any other.

    >>> sample_sql("mysql", "my`t", "c", 3)
    'SELECT DISTINCT `c` FROM `my``t` WHERE `c` IS NOT NULL LIMIT 3'
    >>> sample_sql("tsql", "t", "c", 3)
    'SELECT DISTINCT TOP 3 [c] FROM [t] WHERE NOT [c] IS NULL'
    """
    q = _QUOTE.get(dialect)
    if q is None:
        return (exp.select(exp.column(column, quoted=True)).distinct()
                .from_(exp.table_(table, quoted=True))
                .where(exp.column(column, quoted=True).is_(exp.null()).not_())
                .limit(n).sql(dialect=dialect))
    col, tab = (q + name.replace(q, q + q) + q for name in (column, table))
    return f"SELECT DISTINCT {col} FROM {tab} WHERE {col} IS NOT NULL LIMIT {int(n)}"


def memory_bytes(text: str) -> int:
    """A DuckDB-style memory size in bytes ('1GB' = 10**9, '512MiB' = 512 * 2**20).

    >>> memory_bytes("256MB"), memory_bytes("1GiB"), memory_bytes("2 GB")
    (256000000, 1073741824, 2000000000)
    """
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?i?b?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"The memory limit {text!r} is not a size.", hint="Set NL2SQL_MEMORY_LIMIT to e.g. 1GB or 512MB.")
    unit = m.group(2).rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = "kmgt".index(unit[0]) + 1 if unit else 0
    return int(float(m.group(1)) * base ** power)


def run_in_worker(worker, engine: str, sql: str, *, row_limit: int, timeout: float, settings):
    """A query in an embedded engine's worker process, its failures as nl2sql errors."""
    try:
        return worker.request({"op": "run", "sql": sql, "row_limit": row_limit, "timeout": timeout,
                               "max_bytes": settings.max_result_bytes}, timeout=timeout)
    except WorkerError as e:
        if e.kind == "timeout":
            raise QueryTimeout(f"The query ran longer than {timeout:g} s and was stopped.",
                               hint="Narrow the question, or raise NL2SQL_STATEMENT_TIMEOUT.") from None
        if e.kind == "memory":
            raise ResourceLimitError(f"The query needed more than {settings.memory_limit} of memory and was stopped.",
                                     hint="Narrow the question, or raise NL2SQL_MEMORY_LIMIT.") from None
        if e.kind == "toobig":
            raise ResourceLimitError(f"The query built a value larger than {settings.max_result_bytes:,} bytes and "
                                     "was stopped.", hint="Narrow the question, or raise NL2SQL_MAX_RESULT_BYTES.") from None
        if e.kind == "statement":
            raise ExecutionError(f"{engine} runs one SELECT statement per query here; this SQL has {e}.",
                                 hint="Send one SELECT at a time.") from None
        if e.kind == "died":
            raise ExecutionError(f"The {engine} query process ended unexpectedly and was restarted.",
                                 hint="Run the query again; if it keeps failing, narrow it.") from None
        raise ExecutionError(f"{engine} refused the query: {e}", hint="Check the SQL against the schema.") from None


class Stop:
    """What an engine family's arm() set up: whether its limit fired, and how to undo it."""

    def __init__(self):
        self.fired = False
        self.undo = None

    def disarm(self):
        if self.undo:
            self.undo()


def one_line(e) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
