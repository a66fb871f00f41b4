"""Turning `db=` into an open, read-only connection and its dialect.

Accepted: None (the embedded demo warehouse), a path to a .duckdb or .sqlite file, a SQLAlchemy URL
(sqlite, postgresql, mysql/mariadb, duckdb), a SQLAlchemy Engine, or a duckdb connection. DuckDB files are
opened natively, read-only, with external access off and the configuration locked; everything else goes
through SQLAlchemy. Credentials never appear in `display_name` or in error messages.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from sqlglot import exp

from .errors import ConnectError, ExecutionError, QueryTimeout, ResourceLimitError
from .schema import Column, ForeignKey, Table

DUCKDB_SUFFIXES = (".duckdb", ".ddb")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_DIALECTS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql",
             "sqlite": "sqlite", "duckdb": "duckdb", "mssql": "tsql", "snowflake": "snowflake",
             "trino": "trino", "bigquery": "bigquery", "oracle": "oracle"}


def open_warehouse(db=None, settings=None) -> "Warehouse":
    from .config import Settings
    settings = settings or Settings.from_env()
    if db is None:
        from schemas.demo import demo_warehouse_path
        return DuckDBWarehouse(demo_warehouse_path(settings), settings, name="demo retail warehouse")
    if hasattr(db, "execute") and type(db).__module__.startswith("duckdb"):
        return DuckDBWarehouse(None, settings, conn=db, name="duckdb connection")
    if hasattr(db, "dialect") and hasattr(db, "connect"):  # a SQLAlchemy Engine
        return SQLAlchemyWarehouse(db, settings)
    if isinstance(db, Path):
        db = str(db)
    if not isinstance(db, str) or not db.strip():
        raise ConnectError("db must be a database URL, a .duckdb/.sqlite path, or None for the demo warehouse.",
                           hint="Example: db='sqlite:///shop.sqlite' or db='warehouse.duckdb'.")
    db = db.strip()
    if "://" not in db:
        path = Path(db).expanduser()
        if not path.exists():
            raise ConnectError(f"No database file at {path}.", hint="Check the path, or pass a SQLAlchemy URL.")
        if path.suffix.lower() in DUCKDB_SUFFIXES or _is_duckdb_file(path):
            return DuckDBWarehouse(path, settings)
        return SQLAlchemyWarehouse(f"sqlite:///{path.resolve()}", settings)
    scheme = db.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "duckdb":
        # duckdb:///relative.duckdb and duckdb:////absolute.duckdb, as SQLAlchemy spells them
        path = Path(db[len("duckdb:///"):] if db.startswith("duckdb:///") else db.split("://", 1)[1].lstrip("/"))
        if not path.exists():
            raise ConnectError(f"No DuckDB file at {path}.", hint="Check the path in the URL.")
        return DuckDBWarehouse(path, settings)
    return SQLAlchemyWarehouse(db, settings)


def _is_duckdb_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        return head[8:12] == b"DUCK"
    except OSError:
        return False


class Warehouse:
    dialect: str
    display_name: str

    def describe_tables(self) -> tuple[Table, ...]:
        raise NotImplementedError

    def sample_values(self, table: str, column: str, n: int) -> tuple[str, ...]:
        sql = (exp.select(exp.column(column, quoted=True)).distinct()
               .from_(exp.table_(table, quoted=True))
               .where(exp.column(column, quoted=True).is_(exp.null()).not_())
               .limit(n).sql(dialect=self.dialect))
        cols, rows, _ = self.run(sql, row_limit=n, timeout=2.0)
        return tuple(str(r[0])[:60] for r in rows if r[0] is not None and str(r[0]).strip())

    def run(self, sql: str, *, row_limit: int, timeout: float) -> tuple[list[str], list[tuple], bool]:
        """Run one already-validated query read-only; (columns, rows, truncated). Only execute.py calls this."""
        raise NotImplementedError

    def close(self) -> None:
        pass


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
            "memory_limit": settings.memory_limit,
            "threads": max(1, min(4, os.cpu_count() or 1)),
            "temp_directory": self._tmp,
        }
        try:
            self.conn = duckdb.connect(str(path), read_only=True, config=config)
            locked = self.conn.execute("SELECT current_setting('lock_configuration')").fetchone()[0]
            if not locked:  # a second connection to the same file shares the first one's locked instance
                self.conn.execute("SET lock_configuration = true")
        except duckdb.Error as e:
            raise ConnectError(f"Could not open the DuckDB file {self.display_name}: {str(e).splitlines()[0]}",
                               hint="Check that the file is a DuckDB database and no other process holds it for writing.") from None

    def describe_tables(self):
        q = self.conn.execute
        with self._lock:
            tables = q("SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal "
                       "AND schema_name = current_schema() ORDER BY table_name").fetchall()
            cols = q("SELECT table_name, column_name, data_type, comment FROM duckdb_columns() "
                     "WHERE NOT internal AND schema_name = current_schema() ORDER BY table_name, column_index").fetchall()
            cons = q("SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
                     "referenced_column_names FROM duckdb_constraints() WHERE schema_name = current_schema()").fetchall()
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

    def run(self, sql, *, row_limit, timeout):
        import duckdb
        timer = threading.Timer(timeout, self.conn.interrupt)
        with self._lock:
            timer.start()
            try:
                cur = self.conn.execute(sql)
                columns = [d[0] for d in cur.description]
                rows = cur.fetchmany(row_limit + 1)
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
        return columns, rows[:row_limit], len(rows) > row_limit

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


class SQLAlchemyWarehouse(Warehouse):
    def __init__(self, url_or_engine, settings):
        import sqlalchemy as sa
        self.settings = settings
        if isinstance(url_or_engine, str):
            try:
                url = sa.make_url(url_or_engine)
            except Exception:
                raise ConnectError("That database URL is malformed.",
                                   hint="Use a SQLAlchemy URL such as postgresql://user@host/db.") from None
            url, connect_args = _read_only_url(url, settings)
            try:
                self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
            except Exception as e:
                raise ConnectError(f"Cannot use the database URL {url.render_as_string(hide_password=True)}: "
                                   f"{_one_line(e)}", hint="Install the driver (pip install nl2sql[postgres] / "
                                   "nl2sql[mysql]) or fix the URL.") from None
        else:
            self.engine = url_or_engine
        backend = self.engine.dialect.name
        self.dialect = _DIALECTS.get(backend, backend)
        safe = self.engine.url.render_as_string(hide_password=True)
        self.display_name = Path(self.engine.url.database or "").name if backend == "sqlite" else safe
        try:
            with self.engine.connect() as c:
                c.exec_driver_sql("SELECT 1")
            # SQLAlchemy learns whether a mysql server is MariaDB on the first connection
            self.is_mariadb = self.dialect == "mysql" and getattr(self.engine.dialect, "is_mariadb", False)
        except Exception as e:
            raise ConnectError(f"Cannot connect to {safe}: {_scrub(_one_line(e), self.engine.url)}",
                               hint="Check that the server is running and the URL, user and database are right.") from None

    def describe_tables(self):
        import sqlalchemy as sa
        insp = sa.inspect(self.engine)
        out = []
        for t in sorted(insp.get_table_names()):
            try:
                cols = insp.get_columns(t)
                pk = set(insp.get_pk_constraint(t).get("constrained_columns") or ())
                fks = insp.get_foreign_keys(t)
                try:
                    comment = (insp.get_table_comment(t) or {}).get("text") or ""
                except NotImplementedError:
                    comment = ""
            except Exception:  # a table we may not read is left out, not fatal
                continue
            out.append(Table(
                t, tuple(Column(c["name"], str(c["type"]), c["name"] in pk, c.get("comment") or "") for c in cols),
                comment,
                tuple(ForeignKey(a, fk["referred_table"], b) for fk in fks
                      for a, b in zip(fk["constrained_columns"], fk["referred_columns"]))))
        return tuple(out)

    def run(self, sql, *, row_limit, timeout):
        import sqlalchemy as sa
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            stop = _arm_timeout(self.dialect, conn, raw, timeout, self.is_mariadb)
            try:
                result = conn.exec_driver_sql(sql)
                columns = list(result.keys())
                rows = [tuple(r) for r in result.fetchmany(row_limit + 1)]
            except sa.exc.DBAPIError as e:
                text = _one_line(e.orig if e.orig is not None else e)
                if stop.fired or _is_timeout(text):
                    raise QueryTimeout(f"The query ran longer than {timeout:g} s and was stopped.",
                                       hint="Narrow the question, or raise NL2SQL_STATEMENT_TIMEOUT.") from None
                raise ExecutionError(f"The database refused the query: {_scrub(text, self.engine.url)[:300]}",
                                     hint="Check the SQL against the schema.") from None
            finally:
                stop.disarm()
                try:
                    conn.rollback()  # read-only transaction: nothing to keep, and nothing kept
                except Exception:
                    pass
        return columns, rows[:row_limit], len(rows) > row_limit

    def close(self):
        self.engine.dispose()


def _read_only_url(url, settings):
    """Engine-level read-only where the driver offers it, plus connect timeouts."""
    backend = url.get_backend_name()
    args = {}
    if backend == "sqlite":
        db = url.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser()
            if not path.exists():
                raise ConnectError(f"No SQLite file at {path}.", hint="Check the path in the URL.")
            url = url.set(database=f"file:{path.resolve()}?mode=ro", query={"uri": "true"})
        args["check_same_thread"] = False
    elif backend == "postgresql":
        args["connect_timeout"] = max(1, int(settings.connect_timeout))
        args["options"] = "-c default_transaction_read_only=on"
    elif backend in ("mysql", "mariadb"):
        args["connect_timeout"] = max(1, int(settings.connect_timeout))
        args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    return url, args


class _Stop:
    """What _arm_timeout set up: whether the limit fired, and how to undo it."""

    def __init__(self):
        self.fired = False
        self.undo = None

    def disarm(self):
        if self.undo:
            self.undo()


def _arm_timeout(dialect, conn, raw, timeout, is_mariadb) -> _Stop:
    """Start the per-statement limit each engine understands, inside a read-only transaction."""
    stop = _Stop()
    if dialect == "postgres":
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
    elif dialect == "mysql":
        conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        if is_mariadb:
            conn.exec_driver_sql(f"SET SESSION max_statement_time = {timeout:.3f}")
        else:
            conn.exec_driver_sql(f"SET SESSION max_execution_time = {int(timeout * 1000)}")
        conn.exec_driver_sql("START TRANSACTION READ ONLY")
    elif dialect == "sqlite":
        import time
        deadline = time.monotonic() + timeout

        def check():
            if time.monotonic() > deadline:
                stop.fired = True
                return 1  # non-zero aborts the statement with "interrupted"
            return 0
        raw.set_progress_handler(check, 10000)
        stop.undo = lambda: raw.set_progress_handler(None, 0)
    return stop


def _is_timeout(text: str) -> bool:
    t = text.lower()
    return any(k in t for k in ("statement timeout", "canceling statement", "max_statement_time",
                                "max_execution_time", "interrupted", "query execution was interrupted"))


def _one_line(e) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _scrub(text: str, url) -> str:
    if url.password:
        text = text.replace(str(url.password), "***")
    return text
