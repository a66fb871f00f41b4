"""Introspection on real engines: batched catalog reads give the same Schema as the per-table reads, and
sample values are taken up front only for small schemas, later for the tables asked for (`with_samples`)."""
from __future__ import annotations

import shutil
import sqlite3

import pytest

from nl2sql.errors import SchemaError
from nl2sql.schema import ForeignKey, introspect, is_text_column, with_samples
from nl2sql.warehouse import open_warehouse

from conftest import MY_ADMIN, PG_ADMIN, SPIDER

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nl2sql_introspect"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/nl2sql_introspect"
FILLERS = 20  # tables beyond the four keyed ones, so that "one read per table" would show


def _ddl(dialect: str) -> list[str]:
    """Four tables with single and composite primary and foreign keys, comments where the engine has them,
    plus FILLERS small tables."""
    mysql, sqlite = dialect == "mysql", dialect == "sqlite"
    cmt = (lambda text: f" COMMENT '{text}'") if mysql else (lambda text: "")
    out = [
        f"CREATE TABLE team (team_id INTEGER PRIMARY KEY, name VARCHAR(40), city VARCHAR(40){cmt('Home city')})"
        + (" COMMENT='Teams of the league'" if mysql else ""),
        "CREATE TABLE player (player_id INTEGER PRIMARY KEY, team_id INTEGER, name VARCHAR(40), height REAL"
        + (", nickname" if sqlite else "") + ", FOREIGN KEY (team_id) REFERENCES team (team_id))",
        "CREATE TABLE roster (season INTEGER, player_id INTEGER, team_id INTEGER, PRIMARY KEY (season, player_id), "
        "FOREIGN KEY (player_id) REFERENCES player (player_id), FOREIGN KEY (team_id) REFERENCES team (team_id))",
        "CREATE TABLE award (award_id INTEGER PRIMARY KEY, season INTEGER, player_id INTEGER, title VARCHAR(40), "
        "FOREIGN KEY (season, player_id) REFERENCES roster (season, player_id))",
    ]
    if dialect in ("postgres", "duckdb"):
        out += ["COMMENT ON TABLE team IS 'Teams of the league'", "COMMENT ON COLUMN team.city IS 'Home city'"]
    out += [f"CREATE TABLE filler_{i:02d} (id INTEGER PRIMARY KEY, label VARCHAR(20))" for i in range(FILLERS)]
    out += ["INSERT INTO team VALUES (1, 'Owls', 'Leeds'), (2, 'Hawks', 'York')",
            "INSERT INTO player VALUES (1, 1, 'Ada', 1.8" + (", 'Tiny'" if sqlite else "") + "), "
            "(2, 2, 'Bo', 1.7" + (", 7" if sqlite else "") + ")",
            "INSERT INTO roster VALUES (2020, 1, 1), (2020, 2, 2)",
            "INSERT INTO award VALUES (1, 2020, 1, 'Best rookie')"]
    out += [f"INSERT INTO filler_{i:02d} VALUES (1, 'f{i}')" for i in range(FILLERS)]
    return out


def _server_db(admin_url: str, url: str, dialect: str) -> str:
    import sqlalchemy as sa
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if dialect == "postgres":
            c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_introspect WITH (FORCE)")
        else:
            c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_introspect")
        c.exec_driver_sql("CREATE DATABASE nl2sql_introspect")
    admin.dispose()
    eng = sa.create_engine(url)
    with eng.begin() as c:
        for s in _ddl(dialect):
            c.exec_driver_sql(s)
    eng.dispose()
    return url


@pytest.fixture(scope="module")
def keyed_sqlite(tmp_path_factory):
    path = tmp_path_factory.mktemp("introspect") / "league.sqlite"
    con = sqlite3.connect(path)
    for s in _ddl("sqlite"):
        con.execute(s)
    con.commit()
    con.close()
    return str(path)


@pytest.fixture(scope="module")
def keyed_duckdb(tmp_path_factory):
    import duckdb
    path = tmp_path_factory.mktemp("introspect") / "league.duckdb"
    con = duckdb.connect(str(path))
    for s in _ddl("duckdb"):
        con.execute(s)
    con.close()
    return str(path)


@pytest.fixture(scope="module")
def keyed_postgres():
    return _server_db(PG_ADMIN, PG_URL, "postgres")


@pytest.fixture(scope="module")
def keyed_mariadb():
    return _server_db(MY_ADMIN, MY_URL, "mysql")


@pytest.fixture(params=["sqlite", "duckdb", "postgres", "mariadb"])
def keyed_db(request):
    return request.getfixturevalue(f"keyed_{request.param}")


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def keyed_sqlalchemy_db(request):
    return request.getfixturevalue(f"keyed_{request.param}")


def test_batched_catalog_reads_equal_the_per_table_reads(keyed_sqlalchemy_db, settings):
    wh = open_warehouse(keyed_sqlalchemy_db, settings)
    try:
        assert wh.describe_tables() == wh._describe_tables_per_table()
    finally:
        wh.close()


def test_catalog_reads_find_tables_keys_and_comments(keyed_db, settings):
    wh = open_warehouse(keyed_db, settings)
    try:
        tables = wh.describe_tables()
    finally:
        wh.close()
    names = [t.name for t in tables]
    assert names == sorted(["award", "player", "roster", "team"] + [f"filler_{i:02d}" for i in range(FILLERS)])
    by = {t.name: t for t in tables}
    assert [c.name for c in by["roster"].columns] == ["season", "player_id", "team_id"]
    assert [c.name for c in by["roster"].columns if c.primary_key] == ["season", "player_id"]
    assert [c.name for c in by["team"].columns if c.primary_key] == ["team_id"]
    assert set(by["player"].foreign_keys) == {ForeignKey("team_id", "team", "team_id")}
    assert set(by["roster"].foreign_keys) == {ForeignKey("player_id", "player", "player_id"),
                                              ForeignKey("team_id", "team", "team_id")}
    assert by["award"].foreign_keys == (ForeignKey("season", "roster", "season"),
                                        ForeignKey("player_id", "roster", "player_id"))
    assert is_text_column(by["team"].column("name")) and not is_text_column(by["team"].column("team_id"))
    if wh.dialect == "sqlite":  # SQLite has no comments
        assert by["team"].comment == "" and by["team"].column("city").comment == ""
    else:
        assert by["team"].comment == "Teams of the league"
        assert by["team"].column("city").comment == "Home city"
        assert by["team"].column("name").comment == ""


def _statements(engine):
    """A list that collects every statement SQLAlchemy sends on `engine` (the real driver still runs them)."""
    import sqlalchemy as sa
    seen = []
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cur, sql, *a: seen.append(sql))
    return seen


def test_postgres_reads_the_catalog_in_a_few_queries_not_per_table(keyed_postgres, settings):
    wh = open_warehouse(keyed_postgres, settings)
    try:
        seen = _statements(wh.engine)
        tables = wh.describe_tables()
        assert len(tables) == 4 + FILLERS
        assert len(seen) < 10, seen  # the per-table reads take four per table (96 here)
        seen.clear()
        wh._describe_tables_per_table()
        assert len(seen) >= 4 * len(tables)
    finally:
        wh.close()


def test_small_schema_gets_samples_for_every_text_column(keyed_db, settings):
    wh = open_warehouse(keyed_db, settings)
    try:
        schema = introspect(wh, sample_values=3)  # 4 + FILLERS tables, 55 columns: under the eager limit
        assert set(schema.table("team").column("name").samples) == {"Owls", "Hawks"}
        assert schema.table("award").column("title").samples == ("Best rookie",)
        assert schema.table("filler_07").column("label").samples == ("f7",)
        assert schema.table("team").column("team_id").samples == ()  # numbers are not sampled
        assert schema == introspect(wh, sample_values=3, eager_columns=None)
        none = introspect(wh, sample_values=0)
        assert not any(c.samples for t in none.tables for c in t.columns)
    finally:
        wh.close()


def test_untyped_sqlite_columns_get_samples(keyed_sqlite, settings):
    """SQLAlchemy reports a column declared without a type as NULL; it can hold text, so it is sampled."""
    wh = open_warehouse(keyed_sqlite, settings)
    try:
        nickname = introspect(wh).table("player").column("nickname")
    finally:
        wh.close()
    assert nickname.type == "NULL"
    assert set(nickname.samples) == {"Tiny", "7"}


def test_large_schema_is_sampled_later_for_the_tables_asked_for(keyed_db, settings):
    wh = open_warehouse(keyed_db, settings)
    try:
        lazy = introspect(wh, sample_values=3, eager_columns=20)  # as if the schema were over the limit
        assert not any(c.samples for t in lazy.tables for c in t.columns)
        eager = introspect(wh, sample_values=3, eager_columns=None)
        some = with_samples(wh, lazy, ["TEAM", lazy.table("award")], n=3)
        for t in some.tables:
            assert t == (eager.table(t.name) if t.name in ("team", "award") else lazy.table(t.name))
        assert with_samples(wh, some, None, n=3) == eager  # the rest, keeping what is there
        assert with_samples(wh, lazy, ["team"], n=0) == lazy
        with pytest.raises(SchemaError, match="no table 'nosuch'"):
            with_samples(wh, lazy, ["nosuch"])
    finally:
        wh.close()


def test_with_samples_reads_each_column_once_per_warehouse(keyed_postgres, settings):
    wh = open_warehouse(keyed_postgres, settings)
    try:
        lazy = introspect(wh, sample_values=0)
        seen = _statements(wh.engine)
        first = with_samples(wh, lazy, ["team", "player"])
        queries = [s for s in seen if "statement_timeout" in s]  # one per query the warehouse runs
        assert len(queries) == 3  # team.name, team.city, player.name
        seen.clear()
        assert with_samples(wh, lazy, ["team", "player"]) == first
        assert not any("statement_timeout" in s for s in seen)
    finally:
        wh.close()


def test_default_limit_samples_wide_sqlite_schema_lazily(tmp_path, settings):
    path = tmp_path / "wide.sqlite"
    con = sqlite3.connect(path)
    for i in range(16):  # 160 columns, over the 150 of EAGER_SAMPLE_COLUMNS
        con.execute(f"CREATE TABLE t{i} ({', '.join(f'c{j} TEXT' for j in range(10))})")
        con.execute(f"INSERT INTO t{i} VALUES ({', '.join(repr(f'v{i}_{j}') for j in range(10))})")
    con.commit()
    con.close()
    wh = open_warehouse(str(path), settings)
    try:
        schema = introspect(wh)
        assert schema.column_count == 160
        assert not any(c.samples for t in schema.tables for c in t.columns)
        assert with_samples(wh, schema, ["t3"]).table("t3").column("c4").samples == ("v3_4",)
    finally:
        wh.close()


@pytest.mark.parametrize("db", ["car_1", "concert_singer", "flight_2", "pets_1", "poker_player"])
def test_spider_dev_databases_are_sampled_as_before(db, settings, tmp_path):
    """Small Spider databases keep samples on every text column (their prompts do not change)."""
    copy = tmp_path / f"{db}.sqlite"
    shutil.copy(SPIDER / "database" / db / f"{db}.sqlite", copy)  # nothing may touch the shared file
    wh = open_warehouse(str(copy), settings)
    try:
        schema = introspect(wh, sample_values=3)
        assert schema.column_count <= 150
        assert schema == introspect(wh, sample_values=3, eager_columns=None)
        assert any(c.samples for t in schema.tables for c in t.columns)
    finally:
        wh.close()
