"""DuckDB files: connect arguments, read-only setup, where queries run, the timeout, error mapping.

What the engine guarantees on its own (the SQL checks in validate.py come on top):
- opened read_only, enable_external_access=false (no files, URLs, ATTACH, extensions), extension
  autoload/autoinstall off, memory_limit, threads, a private temp directory, lock_configuration;
- each call runs exactly one statement of type SELECT (DuckDB's own parser), so no temp tables, macros,
  variables or search_path changes survive a query;
- a file nl2sql opens is opened by a worker process (engines/worker.py), never by this one: the timeout
  is DuckDB's interrupt, and past timeout + 0.5 s, or over the memory limit in resident memory, the worker
  is killed (and restarted for the next query); an address-space limit backs that up. A duckdb connection
  your own code passes as db= runs in-process, with the interrupt only.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from ..errors import ConnectError, ExecutionError, QueryTimeout, ResourceLimitError
from ..schema import Column, ForeignKey, Table
from .base import Warehouse, fetch_capped, memory_bytes, run_in_worker
from .worker import EmbeddedWorker, WorkerError


class DuckDBWarehouse(Warehouse):
    dialect = "duckdb"

    def __init__(self, path: Path | None, settings, *, conn=None, name: str | None = None):
        import duckdb
        self.path = path
        self.settings = settings
        self.display_name = name or (Path(path).name if path else "duckdb")
        self._lock = threading.Lock()
        if conn is not None:
            self.conn = conn
            return
        # DuckDB lets one process open a file twice only with identical settings: derive the private temp
        # directory from the file, not from the connection.
        import hashlib
        digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]
        self._tmp = os.path.join(tempfile.gettempdir(), f"nl2sql-duckdb-{os.getuid()}-{digest}")
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        config = {
            "access_mode": "READ_ONLY",
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # DuckDB's own limit (graceful: spills, or an out-of-memory error) sits below the worker's kill line
            # at NL2SQL_MEMORY_LIMIT, which catches the memory DuckDB does not account for (one huge call)
            "memory_limit": f"{max(16, int(memory_bytes(settings.memory_limit) * 0.8 / 1e6))}MB",
            "threads": max(1, min(4, os.cpu_count() or 1)),
            "temp_directory": self._tmp,
        }
        # The file is opened by a worker process (engines/worker.py), which a query that outlives the timeout
        # or the memory limit is killed with; this process never opens it.
        self.conn = None
        limit = memory_bytes(settings.memory_limit)
        self._worker = EmbeddedWorker("duckdb", str(path), memory_limit_bytes=limit, open_args={
            "config": config, "address_space_bytes": 2 * limit + (512 << 20)})
        try:
            self._worker.request({"op": "run", "sql": "SELECT 1", "row_limit": 1, "timeout": 30.0,
                                  "max_bytes": 1000}, timeout=30.0)
        except WorkerError as e:
            self._worker.close()
            raise ConnectError(f"Could not open the DuckDB file {self.display_name}: {e}",
                               hint="Check that the file is a DuckDB database and no other process holds it for writing.") from None

    _worker = None

    def _internal(self, sql: str) -> list[tuple]:
        """Rows of a catalog query nl2sql wrote itself (introspection), wherever the connection lives."""
        if self._worker is not None:
            try:
                return self._worker.request({"op": "run", "sql": sql, "row_limit": 10_000_000, "timeout": 60.0,
                                             "max_bytes": 1 << 40}, timeout=60.0)[1]
            except WorkerError as e:
                raise ExecutionError(f"DuckDB could not describe the database: {e}",
                                     hint="Check that the file is a readable DuckDB database.") from None
        with self._lock:
            return self.conn.execute(sql).fetchall()

    def describe_tables(self):
        """Tables of the current schema with columns, keys and comments: three catalog queries in all."""
        q = self._internal
        here = "database_name = current_database() AND schema_name = current_schema()"
        tables = q(f"SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal AND {here} ORDER BY table_name")
        cols = q(f"SELECT table_name, column_name, data_type, comment FROM duckdb_columns() "
                 f"WHERE NOT internal AND {here} ORDER BY table_name, column_index")
        cons = q(f"SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
                 f"referenced_column_names FROM duckdb_constraints() WHERE {here} "
                 f"ORDER BY table_name, constraint_index")
        pks, fks = {}, {}
        for t, kind, ccols, rt, rcols in cons:
            if kind == "PRIMARY KEY":
                pks.setdefault(t, set()).update(ccols)
            elif kind == "FOREIGN KEY" and rt:
                for c, r in zip(ccols, rcols or ()):
                    fks.setdefault(t, []).append(ForeignKey(c, rt, r))
        by_table = {}
        for t, c, typ, comment in cols:
            by_table.setdefault(t, []).append(Column(c, typ, c in pks.get(t, ()), comment or ""))
        return tuple(Table(t, tuple(by_table.get(t, ())), comment or "", tuple(fks.get(t, ()))) for t, comment in tables)

    def _list_tables(self):
        names = self._internal(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal AND schema_name = current_schema() "
            "UNION SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = current_schema()")
        schema = self._internal("SELECT current_schema()")[0][0]
        return frozenset(n for (n,) in names), frozenset({schema})

    def run(self, sql, *, row_limit, timeout, fresh_session: bool = False):
        import duckdb
        if self._worker is not None:
            return run_in_worker(self._worker, "DuckDB", sql, row_limit=row_limit, timeout=timeout,
                                  settings=self.settings)
        with self._lock:
            # DuckDB's own parser: exactly one SELECT. Read-only mode still allows temp tables, macros, variables
            # and search_path changes, which would outlive the query on this shared connection.
            try:
                statements = self.conn.extract_statements(sql)
            except duckdb.Error as e:
                raise ExecutionError(f"DuckDB refused the query: {str(e).splitlines()[0][:300]}",
                                     hint="Check the SQL against the schema.") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                kinds = ", ".join(str(st.type).rsplit(".", 1)[-1] for st in statements) or "none"
                raise ExecutionError(f"DuckDB runs one SELECT statement per query here; this SQL has {kinds}.",
                                     hint="Send one SELECT at a time.")
            timer = threading.Timer(timeout, self.conn.interrupt)
            timer.start()
            try:
                cur = self.conn.execute(sql)
                columns = [d[0] for d in cur.description]
                rows, truncated = fetch_capped(cur.fetchmany, row_limit, self.settings.max_result_bytes)
            except duckdb.InterruptException:
                raise QueryTimeout(f"The query ran longer than {timeout:g} s and was stopped.",
                                   hint="Narrow the question, or raise NL2SQL_STATEMENT_TIMEOUT.") from None
            except duckdb.OutOfMemoryException:
                raise ResourceLimitError(f"The query needed more than {self.settings.memory_limit} of memory and was stopped.",
                                         hint="Narrow the question, or raise NL2SQL_MEMORY_LIMIT.") from None
            except duckdb.Error as e:
                raise ExecutionError(f"DuckDB refused the query: {str(e).splitlines()[0][:300]}",
                                     hint="Check the SQL against the schema.") from None
            finally:
                timer.cancel()
        return columns, rows, truncated

    def close(self):
        if self._worker is not None:
            self._worker.close()
        try:
            self.conn.close()
        except Exception:
            pass
