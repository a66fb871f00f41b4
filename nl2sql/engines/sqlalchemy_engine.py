"""Databases reached through SQLAlchemy (PostgreSQL, MariaDB/MySQL, SQLite, or an Engine your code built):
one Warehouse class; what differs per engine lives in its family module (postgres_engine, mysql_engine,
sqlite_engine), which this module calls for connect arguments, read-only setup and timeout, the cursor,
and the session state a query may leave. Credentials never appear in `display_name` or in messages.
"""
from __future__ import annotations

import types

from ..errors import ConnectError, ExecutionError, QueryTimeout
from ..schema import Column, ForeignKey, Table
from . import mysql_engine, postgres_engine, sqlite_engine
from .base import Stop, Warehouse, fetch_capped, one_line, run_in_worker
from .policy import check_url

DIALECTS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql",
            "sqlite": "sqlite", "duckdb": "duckdb", "mssql": "tsql", "snowflake": "snowflake",
            "trino": "trino", "bigquery": "bigquery", "oracle": "oracle"}
FAMILIES = {"postgresql": postgres_engine, "mysql": mysql_engine, "mariadb": mysql_engine, "sqlite": sqlite_engine}
# An Engine of another kind, built by your own code: trusted, run on the plain path with no engine-side limits.
_OTHER = types.SimpleNamespace(TIMEOUT_TEXTS=(), arm=lambda conn, raw, timeout, wh: Stop(),
                               open_cursor=lambda raw: None, left_state=lambda conn: False,
                               resource_error=lambda text, max_bytes: None)


class SQLAlchemyWarehouse(Warehouse):
    _worker = None

    def __init__(self, url_or_engine, settings):
        import sqlalchemy as sa
        self.settings = settings
        if isinstance(url_or_engine, (str, sa.URL)):
            url = check_url(url_or_engine, settings)
            url, connect_args = FAMILIES[url.get_backend_name()].connect_args(url, settings)
            try:
                self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
            except Exception as e:
                raise ConnectError(f"Cannot use the database URL {url.render_as_string(hide_password=True)}: "
                                   f"{one_line(e)}", hint="Install the driver (pip install nl2sql[postgres] / "
                                   "nl2sql[mysql]) or fix the URL.") from None
        else:
            self.engine = url_or_engine
        backend = self.engine.dialect.name
        self.family = FAMILIES.get(backend, _OTHER)
        self.dialect = DIALECTS.get(backend, backend)
        safe = self.engine.url.render_as_string(hide_password=True)
        self.display_name = sqlite_engine.display_name(self.engine.url.database) if backend == "sqlite" else safe
        try:
            with self.engine.connect() as c:
                c.exec_driver_sql("SELECT 1")
            # SQLAlchemy learns whether a mysql server is MariaDB on the first connection
            self.is_mariadb = self.dialect == "mysql" and getattr(self.engine.dialect, "is_mariadb", False)
        except Exception as e:
            raise ConnectError(f"Cannot connect to {safe}: {_scrub(one_line(e), self.engine.url)}",
                               hint="Check that the server is running and the URL, user and database are right.") from None
        db = self.engine.url.database or ""
        if backend == "sqlite" and isinstance(url_or_engine, (str, sa.URL)) and db.startswith("file:"):
            # A SQLite file nl2sql opened itself: queries run in a worker process that is killed past the
            # timeout or the memory limit; introspection stays here (read-only URI).
            self._worker = sqlite_engine.worker_for(db, settings)

    def describe_tables(self):
        """Tables of the default schema with columns, keys and comments: one catalog read per kind.

        SQLAlchemy's multi-table reflection is one catalog query per kind on PostgreSQL (not one per table),
        and one SHOW CREATE TABLE per table on MariaDB/MySQL (instead of one per kind and table). If a multi
        read fails (a dialect without it, a table we may not read), the per-table reads run instead, which
        leave an unreadable table out."""
        import sqlalchemy as sa
        insp = sa.inspect(self.engine)
        try:
            cols = insp.get_multi_columns()  # {(schema, table): [column dicts]}; schema None = the default one
            pks = insp.get_multi_pk_constraint()
            fks = insp.get_multi_foreign_keys()
            try:
                comments = insp.get_multi_table_comment()
            except NotImplementedError:
                comments = {}
        except Exception:
            return self._describe_tables_per_table()
        return tuple(_table(key[1], cols[key], pks.get(key) or {}, fks.get(key) or (), comments.get(key) or {})
                     for key in sorted(cols, key=lambda k: k[1]))

    def _describe_tables_per_table(self):
        """describe_tables() with four catalog reads per table (the fallback, and what tests compare with)."""
        import sqlalchemy as sa
        insp = sa.inspect(self.engine)
        out = []
        for t in sorted(insp.get_table_names()):
            try:
                cols = insp.get_columns(t)
                pk = insp.get_pk_constraint(t)
                fks = insp.get_foreign_keys(t)
                try:
                    comment = insp.get_table_comment(t)
                except NotImplementedError:
                    comment = {}
            except Exception:  # a table we may not read is left out, not fatal
                continue
            out.append(_table(t, cols, pk, fks, comment))
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
        if self._worker is not None:
            return run_in_worker(self._worker, "SQLite", sql, row_limit=row_limit, timeout=timeout,
                                 settings=self.settings)
        family = self.family
        dbapi_error = getattr(self.engine.dialect, "loaded_dbapi", None)
        dbapi_error = getattr(dbapi_error, "Error", sa.exc.DBAPIError)
        max_bytes = self.settings.max_result_bytes
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            stop = family.arm(conn, raw, timeout, self)
            cur = None
            # Sessions are discarded after a query whose functions nl2sql did not vet (the administrator's
            # NL2SQL_EXTRA_FUNCTIONS, or the test-only switch): it may have left a backup or lock open.
            discard = bool(fresh_session) and family in (postgres_engine, mysql_engine)
            try:
                cur = family.open_cursor(raw)
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
                rows, truncated = fetch_capped(fetchmany, row_limit, max_bytes)
            except (sa.exc.DBAPIError, dbapi_error) as e:
                text = one_line(getattr(e, "orig", None) or e)
                if stop.fired or any(k in text.lower() for k in family.TIMEOUT_TEXTS):
                    raise QueryTimeout(f"The query ran longer than {timeout:g} s and was stopped.",
                                       hint="Narrow the question, or raise NL2SQL_STATEMENT_TIMEOUT.") from None
                limit_error = family.resource_error(text, max_bytes)
                if limit_error is not None:
                    raise limit_error from None
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
                    if family.left_state(conn):
                        discard = True
                    conn.rollback()
                except Exception:
                    discard = True
                if discard:
                    conn.invalidate()  # the pool opens a fresh connection for the next query
        return columns, rows, truncated

    def close(self):
        if self._worker is not None:
            self._worker.close()
        self.engine.dispose()


def _table(name: str, cols, pk: dict, fks, comment: dict) -> Table:
    """A Table from SQLAlchemy's reflection dicts (get_columns, get_pk_constraint, get_foreign_keys, get_table_comment)."""
    keys = set(pk.get("constrained_columns") or ())
    return Table(
        name, tuple(Column(c["name"], str(c["type"]), c["name"] in keys, c.get("comment") or "") for c in cols),
        (comment or {}).get("text") or "",
        tuple(ForeignKey(a, fk["referred_table"], b) for fk in fks
              for a, b in zip(fk["constrained_columns"], fk["referred_columns"])))


def _scrub(text: str, url) -> str:
    """The error text with the URL's password (plain or URL-encoded) replaced."""
    from urllib.parse import quote, quote_plus
    if url.password:
        pw = str(url.password)
        for form in {pw, quote(pw, safe=""), quote_plus(pw)}:
            if form:
                text = text.replace(form, "***")
    return text
