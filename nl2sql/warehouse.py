"""Turning `db=` into an open, read-only connection and its dialect.

Accepted: None (the embedded demo warehouse), a path to a .duckdb or .sqlite file, a SQLAlchemy URL
(sqlite, postgresql, mysql/mariadb, duckdb), a SQLAlchemy Engine, or a duckdb connection. DuckDB files are
opened natively, read-only, with external access off and the configuration locked; everything else goes
through SQLAlchemy. Credentials never appear in `display_name` or in error messages.

Paths and URLs may come from a user (the app's connection picker), so they are checked, failing closed
(`check_url`): known backends and drivers only, an allowlist of harmless URL options (nothing that runs
code, reads files or changes session settings), database files only where `allowed_db_paths` permits and
never nl2sql's own data. A SQLAlchemy Engine or duckdb connection built by your own code is trusted as is.

What each engine guarantees on its own (the SQL checks in validate.py come on top):
- DuckDB file: opened read_only, enable_external_access=false (no files, URLs, ATTACH, extensions),
  extension autoload/autoinstall off, memory_limit, threads, a private temp directory, lock_configuration;
  each call runs exactly one statement of type SELECT (DuckDB's own parser), so no temp tables, macros,
  variables or search_path changes survive a query.
- SQLite: mode=ro, an authorizer that allows only reads and non-file functions, no ATTACH (limit 0), one
  statement per call (the sqlite3 module), the largest value capped at max_result_bytes.
- PostgreSQL: every query in a READ ONLY transaction (also the session default) run through a server-side
  cursor, so it is a single SELECT/VALUES (DECLARE accepts nothing else, nor data-modifying CTEs), rolled
  back afterwards. A superuser can still read server files with pg_read_file(): connect as a SELECT-only
  role (nl2sql.roles.readonly_role_sql) for the engine to hold without the SQL checks.
- MariaDB/MySQL: every query in a READ ONLY transaction, one statement per call (no multi-statements), with
  max_statement_time. FILE and SUPER privileges still allow LOAD_FILE(), INTO OUTFILE and SET GLOBAL:
  connect as a SELECT-only user (readonly_role_sql) for the engine to hold without the SQL checks.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from pathlib import Path

from sqlglot import exp

from .engines.worker import EmbeddedWorker, WorkerError
from .errors import ConfigError, ConnectError, ExecutionError, QueryTimeout, ResourceLimitError
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
    if hasattr(db, "execute") and type(db).__module__.lstrip("_").startswith("duckdb"):  # duckdb 1.x: _duckdb
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
        path = check_db_path(db, settings, kind="database")
        if path.suffix.lower() in DUCKDB_SUFFIXES or _is_duckdb_file(path):
            return DuckDBWarehouse(path, settings)
        import sqlalchemy as sa
        return SQLAlchemyWarehouse(sa.URL.create("sqlite", database=str(path)), settings)  # no ?/# parsing
    scheme = db.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme == "duckdb":
        # duckdb:///relative.duckdb and duckdb:////absolute.duckdb, as SQLAlchemy spells them
        rest = db[len("duckdb:///"):] if db.startswith("duckdb:///") else db.split("://", 1)[1].lstrip("/")
        if "?" in rest or "#" in rest:
            raise ConnectError("DuckDB URLs take no options here (they could change the engine's settings).",
                               hint="Use duckdb:///path/to/file.duckdb; nl2sql sets the read-only options itself.")
        return DuckDBWarehouse(check_db_path(rest, settings, kind="DuckDB"), settings)
    return SQLAlchemyWarehouse(db, settings)


# --- checking what a user may open ------------------------------------------------------------------

# Drivers nl2sql knows how to hold read-only; a bare backend gets the first one.
_DRIVERS = {"postgresql": ("psycopg",), "mysql": ("pymysql",), "mariadb": ("pymysql",), "sqlite": ("pysqlite",)}
# URL query options passed to the driver. Everything else is refused: e.g. libpq's options/passfile/service/
# sslkey/sslrootcert and PyMySQL's init_command/local_infile/read_default_file/client_flag/ssl_* run SQL, read
# files, or allow multi-statements; SQLAlchemy's plugin loads code.
_URL_OPTIONS = {
    "postgresql": {"sslmode", "application_name", "connect_timeout", "target_session_attrs", "keepalives",
                   "keepalives_idle", "keepalives_interval", "keepalives_count", "gssencmode", "channel_binding",
                   "client_encoding", "host", "port", "load_balance_hosts"},
    "mysql": {"charset", "connect_timeout", "read_timeout", "write_timeout"},
    "mariadb": {"charset", "connect_timeout", "read_timeout", "write_timeout"},
    "sqlite": set(),
}


def check_url(url, settings):
    """A user-given SQLAlchemy URL, checked (fail closed) and normalised to a driver nl2sql holds read-only.

    >>> from nl2sql.config import Settings
    >>> check_url("postgresql://me:pw@db.example/sales", Settings()).render_as_string(hide_password=True)
    'postgresql+psycopg://me:***@db.example/sales'
    >>> check_url("mysql+pymysql://me@db/sales?init_command=SET+GLOBAL+x%3D1", Settings())
    Traceback (most recent call last):
    ...
    nl2sql.errors.ConnectionError_: The database URL has the option 'init_command', which nl2sql does not accept (it could run code, read files or change session settings). Remove it; allowed options for mysql: charset, connect_timeout, read_timeout, write_timeout.
    """
    import sqlalchemy as sa
    if isinstance(url, str):
        try:
            url = sa.make_url(url)
        except Exception:  # the text may hold a password: never echo it
            raise ConnectError("That database URL is malformed.",
                               hint="Use a SQLAlchemy URL such as postgresql://user@host/db.") from None
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        shown = url.set(query={}).render_as_string(hide_password=True)  # options may hold secrets: never shown
        raise ConnectError(f"Cannot use the database URL {shown}: nl2sql opens "
                           f"{', '.join(sorted({*_DRIVERS, 'duckdb'}))} URLs, not {backend!r}.",
                           hint="Use one of those, or build a SQLAlchemy Engine in your own code and pass it as db=.")
    driver = url.drivername.split("+", 1)[1] if "+" in url.drivername else None
    if driver is None:
        url = url.set(drivername=f"{backend}+{_DRIVERS[backend][0]}")
    elif driver not in _DRIVERS[backend]:
        raise ConnectError(f"The driver {driver!r} is not one nl2sql can hold read-only for {backend}.",
                           hint=f"Use {backend}+{_DRIVERS[backend][0]}://..., or pass your own SQLAlchemy Engine.")
    allowed = _URL_OPTIONS[backend]
    for key in url.query:
        if key not in allowed:
            raise ConnectError(f"The database URL has the option {key!r}, which nl2sql does not accept (it could "
                               "run code, read files or change session settings).",
                               hint=f"Remove it; allowed options for {backend}: {', '.join(sorted(allowed)) or 'none'}.")
    if backend == "sqlite":
        db = url.database or ""
        if db.startswith("file:"):
            raise ConnectError("SQLite URI filenames (file:...) are not accepted: their options can reopen the file "
                               "writable or attach others.", hint="Give a plain path: sqlite:///path/to/file.sqlite.")
        if db and db != ":memory:":
            url = url.set(database=str(check_db_path(db, settings, kind="SQLite")))
    return url


def check_db_path(path, settings, *, kind: str = "database") -> Path:
    """A database file a user named: it must exist, be a regular file, lie under `allowed_db_paths` when that
    is set, and not be one of nl2sql's own files (the query log, adapters, caches) other than the demo."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConnectError(f"No {kind} file at {p}.", hint="Check the path, or pass a SQLAlchemy URL.")
    real = p.resolve()
    if not real.is_file():
        raise ConnectError(f"{p} is not a regular file.", hint="Point db= at a .duckdb or .sqlite file.")
    own = [Path(settings.data_dir).expanduser().resolve(), Path(settings.cache_dir).expanduser().resolve()]
    if any(_inside(real, d) for d in own) and not re.fullmatch(r"demo-[\w.]+\.duckdb", real.name):
        raise ConnectError(f"{p} is one of nl2sql's own files (query log, adapters or caches), not a warehouse.",
                           hint="Point db= at your own database file.")
    roots = [Path(d).expanduser().resolve() for d in settings.allowed_db_paths.split(os.pathsep) if d.strip()]
    if roots and not any(_inside(real, r) for r in roots):
        raise ConnectError(f"{p} is outside the directories database files may be opened from.",
                           hint="Move the file there, or ask the administrator to extend NL2SQL_ALLOWED_DB_PATHS.")
    return real


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


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
        q = self._internal
        tables = q("SELECT table_name, comment FROM duckdb_tables() WHERE NOT internal "
                   "AND schema_name = current_schema() ORDER BY table_name")
        cols = q("SELECT table_name, column_name, data_type, comment FROM duckdb_columns() "
                 "WHERE NOT internal AND schema_name = current_schema() ORDER BY table_name, column_index")
        cons = q("SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
                 "referenced_column_names FROM duckdb_constraints() WHERE schema_name = current_schema()")
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
            return _run_in_worker(self._worker, "DuckDB", sql, row_limit=row_limit, timeout=timeout,
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
                rows, truncated = _fetch(cur.fetchmany, row_limit, self.settings.max_result_bytes)
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


def _run_in_worker(worker, engine: str, sql: str, *, row_limit: int, timeout: float, settings):
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


class SQLAlchemyWarehouse(Warehouse):
    def __init__(self, url_or_engine, settings):
        import sqlalchemy as sa
        self.settings = settings
        if isinstance(url_or_engine, (str, sa.URL)):
            url = check_url(url_or_engine, settings)
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
        self.display_name = _sqlite_name(self.engine.url.database) if backend == "sqlite" else safe
        try:
            with self.engine.connect() as c:
                c.exec_driver_sql("SELECT 1")
            # SQLAlchemy learns whether a mysql server is MariaDB on the first connection
            self.is_mariadb = self.dialect == "mysql" and getattr(self.engine.dialect, "is_mariadb", False)
        except Exception as e:
            raise ConnectError(f"Cannot connect to {safe}: {_scrub(_one_line(e), self.engine.url)}",
                               hint="Check that the server is running and the URL, user and database are right.") from None
        db = self.engine.url.database or ""
        if backend == "sqlite" and isinstance(url_or_engine, (str, sa.URL)) and db.startswith("file:"):
            # A SQLite file nl2sql opened itself: queries run in a worker process (engines/worker.py) that is
            # killed past the timeout or the memory limit; introspection stays here (read-only URI).
            from urllib.parse import unquote
            from .validate import FunctionPolicy
            policy = FunctionPolicy.from_settings("sqlite", settings)
            limit = memory_bytes(settings.memory_limit)
            self._worker = EmbeddedWorker("sqlite", unquote(db[len("file:"):].split("?", 1)[0]),
                                          memory_limit_bytes=limit, open_args={
                                              "functions": sorted(policy.names | policy.extra),
                                              "max_bytes": settings.max_result_bytes,
                                              "address_space_bytes": 2 * limit + (256 << 20)})

    _worker = None

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

    def _list_tables(self):
        import sqlalchemy as sa
        insp = sa.inspect(self.engine)
        names = set(insp.get_table_names())
        try:
            names |= set(insp.get_view_names())
        except NotImplementedError:
            pass
        schema = insp.default_schema_name or ("main" if self.dialect == "sqlite" else "")
        return frozenset(names), frozenset({schema} if schema else ())

    def run(self, sql, *, row_limit, timeout, fresh_session: bool = False):
        import sqlalchemy as sa
        from .validate import FunctionPolicy
        if self._worker is not None:
            return _run_in_worker(self._worker, "SQLite", sql, row_limit=row_limit, timeout=timeout,
                                  settings=self.settings)
        dbapi_error = getattr(self.engine.dialect, "loaded_dbapi", None)
        dbapi_error = getattr(dbapi_error, "Error", sa.exc.DBAPIError)
        max_bytes = self.settings.max_result_bytes
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            stop = _arm_timeout(self.dialect, conn, raw, timeout, self.is_mariadb, max_bytes,
                                FunctionPolicy.from_settings(self.dialect, self.settings))
            cur = None
            # Sessions are discarded after a query whose functions nl2sql did not vet (the administrator's
            # NL2SQL_EXTRA_FUNCTIONS, or the test-only switch): it may have left a backup or lock open.
            discard = bool(fresh_session) and self.dialect in ("postgres", "mysql")
            try:
                cur = _open_cursor(self.dialect, raw)
                if cur is None:  # SQLite, or another driver in an Engine the caller built: the plain path
                    result = conn.exec_driver_sql(sql)
                    returns_rows = result.returns_rows
                    fetchmany = result.fetchmany
                    columns = list(result.keys()) if returns_rows else []
                else:
                    cur.execute(sql)
                    returns_rows = cur.description is not None
                    fetchmany = cur.fetchmany
                    columns = [d[0] for d in cur.description] if returns_rows else []
                if not returns_rows:
                    # Something other than a query ran (possible only with the SQL checks off): whatever it
                    # changed in the session (SET, PREPARE, user variables) goes with the connection.
                    discard = True
                    raise ExecutionError("The statement is not a query (it returned no result set) and was refused.",
                                         hint="Send one SELECT statement.")
                rows, truncated = _fetch(fetchmany, row_limit, max_bytes)
            except (sa.exc.DBAPIError, dbapi_error) as e:
                text = _one_line(getattr(e, "orig", None) or e)
                if stop.fired or _is_timeout(text):
                    raise QueryTimeout(f"The query ran longer than {timeout:g} s and was stopped.",
                                       hint="Narrow the question, or raise NL2SQL_STATEMENT_TIMEOUT.") from None
                if "string or blob too big" in text.lower():
                    raise ResourceLimitError(f"The query built a value larger than {max_bytes:,} bytes and was stopped.",
                                             hint="Narrow the question, or raise NL2SQL_MAX_RESULT_BYTES.") from None
                raise ExecutionError(f"The database refused the query: {_scrub(text, self.engine.url)[:300]}",
                                     hint="Check the SQL against the schema.") from None
            finally:
                if cur is not None:
                    try:  # PyMySQL reads and drops the rest of a streamed result here (bounded by the timeout)
                        cur.close()
                    except Exception:
                        pass
                stop.disarm()
                try:
                    conn.rollback()  # read-only transaction: nothing to keep, and nothing kept
                    discard = discard or _left_session_state(self.dialect, conn)
                except Exception:
                    discard = True
                if discard:
                    conn.invalidate()  # the pool opens a fresh connection for the next query
        return columns, rows, truncated

    def close(self):
        if self._worker is not None:
            self._worker.close()
        self.engine.dispose()


def _sqlite_name(database: str | None) -> str:
    """The file name of a SQLite database, also when it is the read-only URI _read_only_url made.

    >>> _sqlite_name("file:/data/my%20shop.sqlite?mode=ro")
    'my shop.sqlite'
    """
    from urllib.parse import unquote
    db = database or ""
    if db.startswith("file:"):
        db = unquote(db[len("file:"):].split("?", 1)[0])
    return Path(db).name


def _read_only_url(url, settings):
    """Engine-level read-only where the driver offers it, plus connect timeouts."""
    from urllib.parse import quote
    backend = url.get_backend_name()
    args = {}
    if backend == "sqlite":
        db = url.database
        if db and db != ":memory:" and not db.startswith("file:"):
            path = Path(db).expanduser()
            if not path.exists():
                raise ConnectError(f"No SQLite file at {path}.", hint="Check the path in the URL.")
            # percent-encoded: a ? or # in the file name must not start URI options
            url = url.set(database=f"file:{quote(str(path.resolve()), safe='/')}?mode=ro", query={"uri": "true"})
        args["check_same_thread"] = False
    elif backend == "postgresql":
        args["connect_timeout"] = max(1, int(settings.connect_timeout))
        args["options"] = "-c default_transaction_read_only=on"
    elif backend in ("mysql", "mariadb"):
        args["connect_timeout"] = max(1, int(settings.connect_timeout))
        args["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    return url, args


def _fetch(fetchmany, row_limit: int, max_bytes: int):
    """Up to row_limit rows and about max_bytes of data; (rows, truncated) where truncated means a cap cut it."""
    rows: list[tuple] = []
    size = 0
    while len(rows) <= row_limit:
        batch = fetchmany(min(500, row_limit + 1 - len(rows)))
        if not batch:
            return rows, False
        for r in batch:
            size += sum(len(v) if isinstance(v, (str, bytes, bytearray)) else
                        len(repr(v)) if isinstance(v, (list, dict, tuple)) else 8 for v in r)
            if size > max_bytes:
                return rows, True
            rows.append(tuple(r))
    return rows[:row_limit], True


def _open_cursor(dialect, raw):
    """The engine-level single-SELECT cursor where the driver has one, else None.

    PostgreSQL (psycopg): a server-side cursor runs `DECLARE ... CURSOR FOR <sql>` over the extended protocol:
    one statement, SELECT/VALUES only, no data-modifying CTE, and rows stream instead of all landing in memory.
    MySQL/MariaDB (PyMySQL): an unbuffered cursor, so only the rows we keep are held.
    """
    package = type(raw).__module__.split(".")[0]
    # (Both also take the SQL as is: through SQLAlchemy, these drivers would read % in LIKE '%x%' as a placeholder.)
    if dialect == "postgres" and package == "psycopg":
        return raw.cursor(name="nl2sql_query")
    if dialect == "mysql" and package == "pymysql":
        import pymysql.cursors
        return raw.cursor(pymysql.cursors.SSCursor)
    return None


class _Stop:
    """What _arm_timeout set up: whether the limit fired, and how to undo it."""

    def __init__(self):
        self.fired = False
        self.undo = None

    def disarm(self):
        if self.undo:
            self.undo()


def _sqlite_authorizer(functions):
    """SQLite asks this for every operation while it compiles a statement: reads, and allowlisted functions only
    (the same per-dialect allowlist as validate.py, by the name SQLite itself resolves)."""
    import sqlite3

    def authorize(action, arg1, arg2, db_name, trigger):
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and functions.allows_name(arg2 or ""):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return authorize


def _arm_timeout(dialect, conn, raw, timeout, is_mariadb, max_bytes: int = 50_000_000, functions=None) -> _Stop:
    """Start the per-statement limit each engine understands, inside a read-only transaction."""
    stop = _Stop()
    if dialect == "postgres":
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        ms = int(timeout * 1000)
        # one round trip: the statement timeout, a lock wait no longer than it, and a transaction left idle (a
        # client that died mid-fetch) ended by the server after twice that
        conn.exec_driver_sql(f"SELECT set_config('statement_timeout', '{ms}', true), "
                             f"set_config('lock_timeout', '{ms}', true), "
                             f"set_config('idle_in_transaction_session_timeout', '{2 * ms + 1000}', true)")
    elif dialect == "mysql":
        conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
        if is_mariadb:
            conn.exec_driver_sql(f"SET SESSION max_statement_time = {timeout:.3f}")
        else:
            conn.exec_driver_sql(f"SET SESSION max_execution_time = {int(timeout * 1000)}")
        conn.exec_driver_sql("START TRANSACTION READ ONLY")
    elif dialect == "sqlite":
        import time
        from .validate import FunctionPolicy
        functions = functions or FunctionPolicy("sqlite")
        deadline = time.monotonic() + timeout

        def check():
            if time.monotonic() > deadline:
                stop.fired = True
                return 1  # non-zero aborts the statement with "interrupted"
            return 0
        import sqlite3
        raw.set_progress_handler(check, 10000)
        # Engine-level read-only beyond mode=ro: ATTACH would open (and create) other files, pragmas and
        # load_extension change the connection. The authorizer only sees statements compiled while it is set.
        raw.set_authorizer(_sqlite_authorizer(functions))
        limits = hasattr(raw, "setlimit")  # Python 3.11+; before that the authorizer alone refuses ATTACH
        if limits:
            attached = raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            length = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1000, min(int(max_bytes), 1_000_000_000)))

        def undo():
            raw.set_progress_handler(None, 0)
            raw.set_authorizer(None)
            if limits:
                raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, attached)
                raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)
        stop.undo = undo
    return stop


def _left_session_state(dialect: str, conn) -> bool:
    """Whether the session holds something a rollback does not end: session-level advisory locks (PostgreSQL),
    user locks (MariaDB/MySQL; released here, and the session is still discarded)."""
    if dialect == "postgres":
        held = conn.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() "
                                    "AND locktype = 'advisory')").scalar()
    elif dialect == "mysql":
        held = conn.exec_driver_sql("SELECT RELEASE_ALL_LOCKS()").scalar()
    else:
        return False
    conn.rollback()
    return bool(held)


def _is_timeout(text: str) -> bool:
    t = text.lower()
    return any(k in t for k in ("statement timeout", "canceling statement", "max_statement_time",
                                "max_execution_time", "interrupted", "query execution was interrupted"))


def _one_line(e) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _scrub(text: str, url) -> str:
    """The error text with the URL's password (plain or URL-encoded) replaced."""
    from urllib.parse import quote, quote_plus
    if url.password:
        pw = str(url.password)
        for form in {pw, quote(pw, safe=""), quote_plus(pw)}:
            if form:
                text = text.replace(form, "***")
    return text
