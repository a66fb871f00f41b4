"""SQLite: connect arguments (a read-only URI), the worker process, the authorizer, timeout and its undo.

What the engine guarantees on its own (the SQL checks in validate.py come on top):
- mode=ro, no ATTACH (limit 0), the largest value capped at max_result_bytes, one statement per call
  (the sqlite3 module), and an authorizer that allows reads and the allowlisted functions only (the same
  per-dialect list as validate.py, by the name SQLite resolves);
- a file nl2sql opens runs its queries in a worker process (engines/worker.py): the timeout is a progress
  handler, and past timeout + 0.5 s, or over the memory limit, the worker is killed and restarted. An
  Engine your own code passes as db= runs in-process with the same authorizer, limits and progress handler.
"""
from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote, unquote

from ..errors import ConnectError, ResourceLimitError
from .base import Stop, memory_bytes
from .worker import EmbeddedWorker

dialect = "sqlite"
TIMEOUT_TEXTS = ("interrupted",)


def connect_args(url, settings):
    """The file as a read-only URI (percent-encoded: a ? or # in the name must not start URI options)."""
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        path = Path(db).expanduser()
        if not path.exists():
            raise ConnectError(f"No SQLite file at {path}.", hint="Check the path in the URL.")
        url = url.set(database=f"file:{quote(str(path.resolve()), safe='/')}?mode=ro", query={"uri": "true"})
    return url, {"check_same_thread": False}


def file_of(database: str | None) -> str:
    """The file path of a SQLite database, also when it is the read-only URI connect_args made.

    >>> file_of("file:/data/my%20shop.sqlite?mode=ro")
    '/data/my shop.sqlite'
    """
    db = database or ""
    if db.startswith("file:"):
        db = unquote(db[len("file:"):].split("?", 1)[0])
    return db


def display_name(database: str | None) -> str:
    """
    >>> display_name("file:/data/my%20shop.sqlite?mode=ro")
    'my shop.sqlite'
    """
    return Path(file_of(database)).name


def worker_for(database: str, settings) -> EmbeddedWorker:
    """The worker process that runs this file's queries (started on the first one)."""
    from ..validate import FunctionPolicy
    policy = FunctionPolicy.from_settings("sqlite", settings)
    limit = memory_bytes(settings.memory_limit)
    return EmbeddedWorker("sqlite", file_of(database), memory_limit_bytes=limit, open_args={
        "functions": sorted(policy.names | policy.extra), "max_bytes": settings.max_result_bytes,
        "address_space_bytes": 2 * limit + (256 << 20)})


def authorizer(functions):
    """SQLite asks this for every operation while it compiles a statement: reads, and allowlisted functions only."""
    import sqlite3

    def authorize(action, arg1, arg2, db_name, trigger):
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and functions.allows_name(arg2 or ""):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY
    return authorize


def arm(conn, raw, timeout: float, warehouse) -> Stop:
    """In-process (an Engine your code built): progress handler, authorizer and limits, undone afterwards."""
    import sqlite3

    from ..validate import FunctionPolicy
    stop = Stop()
    deadline = time.monotonic() + timeout

    def check():
        if time.monotonic() > deadline:
            stop.fired = True
            return 1  # non-zero aborts the statement with "interrupted"
        return 0
    raw.set_progress_handler(check, 10000)
    # Engine-level read-only beyond mode=ro: ATTACH would open (and create) other files, pragmas and
    # load_extension change the connection. The authorizer only sees statements compiled while it is set.
    raw.set_authorizer(authorizer(FunctionPolicy.from_settings("sqlite", warehouse.settings)))
    limits = hasattr(raw, "setlimit")  # Python 3.11+; before that the authorizer alone refuses ATTACH
    if limits:
        attached = raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        max_bytes = warehouse.settings.max_result_bytes
        length = raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1000, min(int(max_bytes), 1_000_000_000)))

    def undo():
        raw.set_progress_handler(None, 0)
        raw.set_authorizer(None)
        if limits:
            raw.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, attached)
            raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, length)
    stop.undo = undo
    return stop


def open_cursor(raw):
    return None  # the plain path: the sqlite3 module runs one statement per call


def left_state(conn) -> bool:
    return False


def resource_error(text: str, max_bytes: int):
    if "string or blob too big" in text.lower():
        return ResourceLimitError(f"The query built a value larger than {max_bytes:,} bytes and was stopped.",
                                  hint="Narrow the question, or raise NL2SQL_MAX_RESULT_BYTES.")
    return None
