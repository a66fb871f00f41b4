"""PostgreSQL (psycopg): connect arguments, read-only setup, cursor, timeout, session state.

What the engine guarantees on its own (the SQL checks in validate.py come on top):
- every query in a READ ONLY transaction (also the session default) run through a server-side cursor, so
  it is a single SELECT/VALUES (DECLARE accepts nothing else, nor data-modifying CTEs), rolled back
  afterwards;
- per transaction: statement_timeout, lock_timeout (a query never waits on a lock longer than its own
  limit) and idle_in_transaction_session_timeout (a client that died mid-fetch does not hold a snapshot);
- a session left holding an advisory lock, or one that ran functions nl2sql did not vet, is discarded.
A superuser can still read server files with pg_read_file(): connect as a SELECT-only role
(nl2sql.roles.readonly_role_sql) for the engine to hold without the SQL checks.
"""
from __future__ import annotations

from .base import Stop

dialect = "postgres"
TIMEOUT_TEXTS = ("statement timeout", "canceling statement", "lock timeout")


def connect_args(url, settings):
    return url, {"connect_timeout": max(1, int(settings.connect_timeout)),
                 "options": "-c default_transaction_read_only=on"}


def arm(conn, raw, timeout: float, warehouse) -> Stop:
    """A read-only transaction with this query's limits, all transaction-local."""
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    ms = int(timeout * 1000)
    # one round trip: the statement timeout, a lock wait no longer than it, and a transaction left idle (a
    # client that died mid-fetch) ended by the server after twice that
    conn.exec_driver_sql(f"SELECT set_config('statement_timeout', '{ms}', true), "
                         f"set_config('lock_timeout', '{ms}', true), "
                         f"set_config('idle_in_transaction_session_timeout', '{2 * ms + 1000}', true)")
    return Stop()


def open_cursor(raw):
    """A server-side cursor runs `DECLARE ... CURSOR FOR <sql>` over the extended protocol: one statement,
    SELECT/VALUES only, no data-modifying CTE, and rows stream instead of all landing in memory. (It also
    takes the SQL as is: through SQLAlchemy, % in LIKE '%x%' would read as a placeholder.)"""
    if type(raw).__module__.split(".")[0] == "psycopg":
        return raw.cursor(name="nl2sql_query")
    return None


def left_state(conn) -> bool:
    """Whether the session holds what a rollback does not end: session-level advisory locks."""
    return bool(conn.exec_driver_sql("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() "
                                     "AND locktype = 'advisory')").scalar())


def resource_error(text: str, max_bytes: int):
    return None
