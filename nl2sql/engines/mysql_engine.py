"""MariaDB and MySQL (PyMySQL): connect arguments, read-only setup, cursor, timeout, session state.

What the engine guarantees on its own (the SQL checks in validate.py come on top):
- every query in a READ ONLY transaction, one statement per call (no multi-statements), with
  max_statement_time (MariaDB) or max_execution_time (MySQL);
- a session that ran a non-query, or functions nl2sql did not vet, is discarded; user locks (GET_LOCK)
  are released after every query, and a session that held one is discarded too.
FILE and SUPER privileges still allow LOAD_FILE(), INTO OUTFILE and SET GLOBAL: connect as a SELECT-only
user (nl2sql.roles.readonly_role_sql) for the engine to hold without the SQL checks.
"""
from __future__ import annotations

from .base import Stop

dialect = "mysql"
TIMEOUT_TEXTS = ("max_statement_time", "max_execution_time", "query execution was interrupted", "interrupted")


def connect_args(url, settings):
    return url, {"connect_timeout": max(1, int(settings.connect_timeout)),
                 "init_command": "SET SESSION TRANSACTION READ ONLY"}


def arm(conn, raw, timeout: float, warehouse) -> Stop:
    conn.exec_driver_sql("SET SESSION TRANSACTION READ ONLY")
    if getattr(warehouse, "is_mariadb", False):
        conn.exec_driver_sql(f"SET SESSION max_statement_time = {timeout:.3f}")
    else:
        conn.exec_driver_sql(f"SET SESSION max_execution_time = {int(timeout * 1000)}")
    conn.exec_driver_sql("START TRANSACTION READ ONLY")
    return Stop()


def open_cursor(raw):
    """An unbuffered cursor, so only the rows we keep are held (and the SQL is taken as is, % included)."""
    if type(raw).__module__.split(".")[0] == "pymysql":
        import pymysql.cursors
        return raw.cursor(pymysql.cursors.SSCursor)
    return None


def left_state(conn) -> bool:
    """Releases any user locks the query took; whether there were any."""
    return bool(conn.exec_driver_sql("SELECT RELEASE_ALL_LOCKS()").scalar())


def resource_error(text: str, max_bytes: int):
    return None
