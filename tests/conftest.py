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


# --- a small shop with dates, on every engine (tests/test_rewrite.py, tests/test_measures.py) ----------------------
SHOP_SCRATCH = "nl2sql_shop_test"
SHOP_STORES = [(1, "Harbor", "West", 100, "2015-06-01"), (2, "Summit", "West", 300, "2019-02-01"),
               (3, "Prairie", "Midwest", 200, "2021-09-09")]
SHOP_ORDERS = [(1, 1, "2024-12-31", "completed"), (2, 1, "2025-01-01", "completed"), (3, 2, "2025-06-30", "cancelled"),
               (4, 2, "2025-12-31", "completed"), (5, 3, "2026-01-01", "completed")]
SHOP_LINES = [(1, 2, 10.0), (2, 1, 5.0), (2, 3, 2.0), (3, 4, 100.0), (4, 1, 7.5), (5, 2, 1.0)]


def _shop_sql() -> list[str]:
    stmts = ["CREATE TABLE stores (store_id INTEGER PRIMARY KEY, store_name VARCHAR(40), region VARCHAR(40), "
             "square_feet INTEGER, opened DATE)",
             "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, store_id INTEGER, placed DATE, status VARCHAR(20), "
             "FOREIGN KEY (store_id) REFERENCES stores (store_id))",   # MariaDB ignores REFERENCES on a column
             "CREATE TABLE line_items (order_id INTEGER, qty INTEGER, price DECIMAL(10, 2), "
             "FOREIGN KEY (order_id) REFERENCES orders (order_id))"]
    stmts += [f"INSERT INTO stores VALUES ({i}, '{n}', '{r}', {f}, '{d}')" for i, n, r, f, d in SHOP_STORES]
    stmts += [f"INSERT INTO orders VALUES ({i}, {s}, '{d}', '{st}')" for i, s, d, st in SHOP_ORDERS]
    stmts += [f"INSERT INTO line_items VALUES ({o}, {q}, {p})" for o, q, p in SHOP_LINES]
    return stmts


@pytest.fixture(scope="session")
def shop_db(tmp_path_factory):
    """kind (sqlite, duckdb, postgres, mariadb) -> the shop database on that engine (path or URL)."""
    made, admins = {}, []

    def get(kind):
        if kind not in made:
            if kind in ("sqlite", "duckdb"):
                import duckdb
                path = tmp_path_factory.mktemp("shop") / f"shop.{kind}"
                con = sqlite3.connect(path) if kind == "sqlite" else duckdb.connect(str(path))
                for s in _shop_sql():
                    con.execute(s)
                if kind == "sqlite":
                    con.commit()
                con.close()
                made[kind] = str(path)
            else:
                admin_url, dialect, name = {"postgres": (PG_ADMIN, "postgres", "PostgreSQL"),
                                            "mariadb": (MY_ADMIN, "mysql", "MariaDB")}[kind]
                url = admin_url.rsplit("/", 1)[0] + "/" + SHOP_SCRATCH
                made[kind], admin = scratch_database(admin_url, url, dialect, name, SHOP_SCRATCH, _shop_sql())
                admins.append((admin, dialect))
        return made[kind]
    yield get
    for admin, dialect in admins:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {SHOP_SCRATCH}"
                              + (" WITH (FORCE)" if dialect == "postgres" else ""))
        admin.dispose()
