"""Turning `db=` into an open, read-only connection and its dialect.

Accepted: None (the embedded demo warehouse), a path to a .duckdb or .sqlite file, a SQLAlchemy URL
(sqlite, postgresql, mysql/mariadb, duckdb), a SQLAlchemy Engine, or a duckdb connection. DuckDB files are
opened natively, read-only, with external access off and the configuration locked; everything else goes
through SQLAlchemy. Credentials never appear in `display_name` or in error messages.

Each engine family lives in its own module under nl2sql/engines/, which says what that engine guarantees
on its own: duckdb_engine (DuckDB files, in a killable worker process), sqlite_engine (SQLite files, also in
a worker), postgres_engine, mysql_engine (MariaDB/MySQL), sqlalchemy_engine (the Warehouse class they share),
worker (the process), policy (what a user may open: `check_url`, `check_db_path`). A new engine is one new
family module. This module keeps the entry point and the names other modules import.
"""
from __future__ import annotations

from pathlib import Path

from .engines.base import Warehouse, memory_bytes  # noqa: F401  (re-exported)
from .engines.duckdb_engine import DuckDBWarehouse
from .engines.policy import DUCKDB_SUFFIXES, SQLITE_SUFFIXES, check_db_path, check_url, is_duckdb_file  # noqa: F401
from .engines.sqlalchemy_engine import SQLAlchemyWarehouse
from .errors import ConnectError


def open_warehouse(db=None, settings=None) -> "Warehouse":
    from .config import Settings
    settings = settings or Settings.from_env()
    if db is None:
        from .schemas.demo import demo_warehouse_path
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
        if path.suffix.lower() in DUCKDB_SUFFIXES or is_duckdb_file(path):
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
