"""What a user may open: database URLs and file paths, checked and failing closed.

Paths and URLs may come from a user (the app's connection picker): known backends and drivers only, an
allowlist of harmless URL options (nothing that runs code, reads files or changes session settings), database
files only where `allowed_db_paths` permits and never nl2sql's own data. A SQLAlchemy Engine or duckdb
connection built by your own code is trusted as is (it never passes through here).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import ConnectError

DUCKDB_SUFFIXES = (".duckdb", ".ddb")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")

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


def is_duckdb_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        return head[8:12] == b"DUCK"
    except OSError:
        return False
