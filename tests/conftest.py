"""Shared fixtures: isolated data dirs, real databases (SQLite, DuckDB, PostgreSQL, MariaDB), a scripted fake model."""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SPIDER = Path(os.environ.get("NL2SQL_SPIDER_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"))
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nl2sql_test"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/nl2sql_test"

SINGERS = [(1, "Joe Sharp", "Netherlands", 52), (2, "Timbaland", "United States", 32), (3, "Justin Brown", "France", 29),
           (4, "Rose White", "France", 41), (5, "John Nizinik", "France", 43), (6, "Tribal King", "France", 25)]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("nl2sql-data")


@pytest.fixture(scope="session")
def settings(data_dir):
    from nl2sql.config import Settings
    return Settings.from_env(data_dir=data_dir, query_log=str(data_dir / "querylog.sqlite"))


@pytest.fixture(scope="session")
def sqlite_db(tmp_path_factory):
    """A copy of Spider's concert_singer (so nothing can touch the shared file)."""
    src = SPIDER / "database" / "concert_singer" / "concert_singer.sqlite"
    dst = tmp_path_factory.mktemp("sqlite") / "concert_singer.sqlite"
    shutil.copy(src, dst)
    return dst


def _seed_sql(dialect: str) -> list[str]:
    comment = {"postgres": "", "mysql": " COMMENT 'Where the singer comes from'"}[dialect]
    stmts = [
        "DROP TABLE IF EXISTS concert",
        "DROP TABLE IF EXISTS singer",
        f"CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name VARCHAR(80), country VARCHAR(80){comment}, age INTEGER)",
        "CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER REFERENCES singer (singer_id), "
        "year INTEGER)",
    ]
    if dialect == "postgres":
        stmts.append("COMMENT ON COLUMN singer.country IS 'Where the singer comes from'")
    if dialect == "mysql":
        stmts[3] = ("CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER, year INTEGER, "
                    "FOREIGN KEY (singer_id) REFERENCES singer (singer_id))")
    for s in SINGERS:
        stmts.append(f"INSERT INTO singer VALUES ({s[0]}, '{s[1]}', '{s[2]}', {s[3]})")
    stmts += ["INSERT INTO concert VALUES (1, 1, 2014)", "INSERT INTO concert VALUES (2, 3, 2015)"]
    return stmts


def _server(admin_url: str, url: str, dialect: str, name: str):
    import sqlalchemy as sa
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with admin.connect() as c:
            if dialect == "postgres":
                if not c.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = 'nl2sql_test'").first():
                    c.exec_driver_sql("CREATE DATABASE nl2sql_test")
            else:
                c.exec_driver_sql("CREATE DATABASE IF NOT EXISTS nl2sql_test")
        admin.dispose()
    except Exception as e:  # the servers are part of the test environment: fail loudly, never skip
        pytest.fail(f"{name} is not answering at {admin_url}: {e}. Start it (see .ci/run) and rerun.")
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        for s in _seed_sql(dialect):
            c.exec_driver_sql(s)
    eng.dispose()
    return url


def scratch_database(admin_url: str, url: str, dialect: str, name: str, scratch: str, statements: list[str]):
    """A database of its own on a server, created afresh with `statements` for one test module, which drops it
    after (returns its URL and the admin engine to drop it with)."""
    import sqlalchemy as sa
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {scratch}" + (" WITH (FORCE)" if dialect == "postgres" else ""))
            c.exec_driver_sql(f"CREATE DATABASE {scratch}")
    except Exception as e:  # the servers are part of the test environment: fail loudly, never skip
        pytest.fail(f"{name} is not answering at {admin_url}: {e}. Start it (see .ci/run) and rerun.")
    eng = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        for s in statements:
            c.exec_driver_sql(s)
    eng.dispose()
    return url, admin


@pytest.fixture(scope="session")
def postgres_url():
    return _server(PG_ADMIN, PG_URL, "postgres", "PostgreSQL")


@pytest.fixture(scope="session")
def mariadb_url():
    return _server(MY_ADMIN, MY_URL, "mysql", "MariaDB")


@pytest.fixture(scope="session")
def duckdb_file(tmp_path_factory):
    import duckdb
    p = tmp_path_factory.mktemp("duck") / "singers.duckdb"
    con = duckdb.connect(str(p))
    con.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name VARCHAR, country VARCHAR, age INTEGER)")
    con.execute("COMMENT ON COLUMN singer.country IS 'Where the singer comes from'")
    con.execute("CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER REFERENCES singer (singer_id), year INTEGER)")
    con.executemany("INSERT INTO singer VALUES (?, ?, ?, ?)", SINGERS)
    con.execute("INSERT INTO concert VALUES (1, 1, 2014), (2, 3, 2015)")
    con.close()
    return p


@pytest.fixture(params=["sqlite", "duckdb", "postgres", "mariadb"])
def any_db(request):
    """The same small singer database on each engine (SQLite: Spider's concert_singer)."""
    return {"sqlite": lambda: str(request.getfixturevalue("sqlite_db")),
            "duckdb": lambda: str(request.getfixturevalue("duckdb_file")),
            "postgres": lambda: request.getfixturevalue("postgres_url"),
            "mariadb": lambda: request.getfixturevalue("mariadb_url")}[request.param]()


from nl2sql.generate import ScriptedGenerator as FakeGenerator  # noqa: E402  (tests/safety imports it from here)


@pytest.fixture
def fake_pipeline(settings):
    from nl2sql.api import Pipeline

    def make(*outputs):
        return Pipeline(settings, generator=FakeGenerator(outputs))
    return make


def sqlite_rows(path, sql):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
