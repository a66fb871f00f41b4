"""SQLite-style bare columns in grouped queries (selected, ordered or filtered on without GROUP BY or an
aggregate) run on DuckDB and PostgreSQL, which refuse them as written, and give SQLite's answer where SQLite's
is deterministic: validate() wraps them in ANY_VALUE / MIN, or takes the value on the min()/max() row."""
from __future__ import annotations

import sqlite3

import pytest

from nl2sql.executor import run_checked
from nl2sql.schema import introspect
from nl2sql.validate import aggregate_bare_columns, validate
from nl2sql.warehouse import open_warehouse

from conftest import PG_ADMIN

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nl2sql_bare"

ROWS = {
    "dept": [("ENG", "Engineering"), ("OPS", "Operations"), ("ART", "Design")],
    "emp": [(1, "Ada", "ENG", 300, True), (2, "Bo", "ENG", 200, False), (3, "Cy", "OPS", 150, True),
            (4, "Di", "OPS", 250, None), (5, "Ed", "ART", 100, False), (6, "Flo", "ENG", None, True),
            (7, "Gus", "ART", 120, True)],
}
DDL = ["CREATE TABLE dept (code VARCHAR(8) PRIMARY KEY, title VARCHAR(40))",
       "CREATE TABLE emp (id INTEGER PRIMARY KEY, name VARCHAR(40), dept VARCHAR(8) REFERENCES dept (code), "
       "salary INTEGER, active BOOLEAN)"]

# SQLite-dialect queries whose SQLite answer is deterministic (bare columns functionally dependent on the group,
# or taken from the row of the one min()/max())
DETERMINISTIC = [
    "SELECT d.title, count(*) FROM emp AS e JOIN dept AS d ON e.dept = d.code GROUP BY e.dept ORDER BY e.dept",
    "SELECT T2.title, count(*) FROM emp AS T1 JOIN dept AS T2 ON T1.dept = T2.code GROUP BY T1.dept "
    "ORDER BY count(*) DESC, T1.dept LIMIT 1",
    "SELECT name, max(salary) FROM emp",
    "SELECT name, dept, min(salary) FROM emp",
    "SELECT dept, name, max(salary) FROM emp GROUP BY dept ORDER BY dept",
    "SELECT dept, name, min(salary) FROM emp GROUP BY dept ORDER BY dept",
    "SELECT name, max(DISTINCT salary * 2) FROM emp",
    "SELECT name || ' (' || dept || ')', max(salary) FROM emp",
    "SELECT dept, name FROM emp GROUP BY dept HAVING max(salary) > 200 ORDER BY dept",
    "SELECT name FROM emp GROUP BY id ORDER BY salary DESC LIMIT 2",
    "SELECT name FROM emp GROUP BY id HAVING salary > 150 ORDER BY name",
    "SELECT dept, count(*) AS n FROM emp GROUP BY dept ORDER BY n DESC, dept",
    "SELECT dept, count(*) FROM emp GROUP BY 1 ORDER BY 1",
    "SELECT count(*), name FROM emp WHERE id = 3",
    "SELECT name FROM emp WHERE salary = (SELECT max(salary) FROM emp)",
    "SELECT dept, (SELECT title FROM dept AS d WHERE d.code = e.dept) FROM emp AS e GROUP BY dept ORDER BY dept",
    "SELECT name, rank() OVER (ORDER BY salary DESC) FROM emp WHERE salary IS NOT NULL ORDER BY name",
    "SELECT title FROM dept WHERE code IN (SELECT dept FROM emp GROUP BY dept HAVING count(*) > 1) ORDER BY title",
    "SELECT name, max(salary) FROM emp WHERE dept = 'ART' UNION SELECT name, min(salary) FROM emp WHERE dept = 'ENG'",
    "SELECT e.active, e.name FROM emp AS e GROUP BY e.id ORDER BY e.id",
]


def _sqlite_answer(path, sql):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _norm(rows):
    return [tuple(int(v) if isinstance(v, bool) else v for v in r) for r in rows]


@pytest.fixture(scope="module")
def bare_sqlite(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("bare") / "staff.sqlite")
    con = sqlite3.connect(path)
    for s in DDL:
        con.execute(s)
    for table, rows in ROWS.items():
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="module")
def bare_duckdb(tmp_path_factory):
    import duckdb
    path = str(tmp_path_factory.mktemp("bare") / "staff.duckdb")
    con = duckdb.connect(path)
    for s in DDL:
        con.execute(s)
    for table, rows in ROWS.items():
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    con.close()
    return path


@pytest.fixture(scope="module")
def bare_postgres():
    import sqlalchemy as sa
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("DROP DATABASE IF EXISTS nl2sql_bare WITH (FORCE)")
        c.exec_driver_sql("CREATE DATABASE nl2sql_bare")
    admin.dispose()
    eng = sa.create_engine(PG_URL)
    with eng.begin() as c:
        for s in DDL:
            c.exec_driver_sql(s)
        for table, rows in ROWS.items():
            c.exec_driver_sql(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(rows[0]))})", rows)
    eng.dispose()
    return PG_URL


@pytest.fixture(params=["duckdb", "postgres"], scope="module")
def engine_wh(request, settings):
    wh = open_warehouse(request.getfixturevalue(f"bare_{request.param}"), settings)
    yield wh, introspect(wh, sample_values=0)
    wh.close()


@pytest.mark.parametrize("sql", DETERMINISTIC)
def test_grouped_sqlite_query_gives_sqlites_answer(engine_wh, bare_sqlite, settings, sql):
    wh, schema = engine_wh
    checked = validate(sql, schema, settings=settings)
    got = run_checked(wh, checked.sql, settings)  # the executor's own checks pass the emitted functions
    rows = _norm(got.df.astype(object).where(got.df.notna(), None).itertuples(index=False, name=None))
    want = _norm(_sqlite_answer(bare_sqlite, sql))
    if "ORDER BY" not in sql:
        rows, want = sorted(rows, key=repr), sorted(want, key=repr)
    assert rows == want, checked.sql


def test_the_engines_refuse_the_query_as_written(engine_wh, settings):
    """What the rewrite is for: as plain transpiled SQL, the engine refuses the SQLite query."""
    from sqlglot import transpile

    from nl2sql.errors import ExecutionError
    wh, _ = engine_wh
    sql = transpile("SELECT name, max(salary) FROM emp", read="sqlite", write=wh.dialect)[0]
    with pytest.raises(ExecutionError, match="(?i)group by"):
        wh.run(sql, row_limit=10, timeout=5)


def test_result_columns_keep_their_names(engine_wh, settings):
    wh, schema = engine_wh
    got = run_checked(wh, validate("SELECT dept, name, max(salary) FROM emp GROUP BY dept", schema,
                                   settings=settings).sql, settings)
    assert list(got.df.columns)[:2] == ["dept", "name"]


def test_nondeterministic_bare_column_runs_with_a_value_of_its_group(engine_wh, settings):
    """Two min/max aggregates: SQLite takes a row of one of them; any row of the group is as right."""
    wh, schema = engine_wh
    checked = validate("SELECT dept, name, min(salary), max(salary) FROM emp GROUP BY dept ORDER BY dept",
                       schema, settings=settings)
    assert ("ANY_VALUE(" if wh.dialect == "duckdb" else "MIN(") in checked.sql
    rows = list(run_checked(wh, checked.sql, settings).df.itertuples(index=False, name=None))
    by_dept = {}
    for _, name, dept, *_ in ROWS["emp"]:
        by_dept.setdefault(dept, set()).add(name)
    assert [r[0] for r in rows] == ["ART", "ENG", "OPS"]
    assert all(r[1] in by_dept[r[0]] for r in rows)


def test_postgres_boolean_bare_column_avoids_min(bare_postgres, settings):
    wh = open_warehouse(bare_postgres, settings)
    try:
        checked = validate("SELECT active, count(*) FROM emp GROUP BY id ORDER BY id", introspect(wh, sample_values=0),
                           settings=settings)
        assert "ARRAY_AGG" in checked.sql and "MIN(" not in checked.sql
        assert len(run_checked(wh, checked.sql, settings).df) == len(ROWS["emp"])
    finally:
        wh.close()


@pytest.mark.parametrize("sql", [
    "SELECT dept, count(*) FROM emp GROUP BY dept",
    "SELECT dept, count(*) AS n FROM emp GROUP BY dept ORDER BY n",
    "SELECT name FROM emp ORDER BY salary",
    "SELECT max(salary) FROM emp",
    "SELECT name, sum(salary) OVER () FROM emp",
    "SELECT upper(dept), count(*) FROM emp GROUP BY upper(dept)",
])
def test_queries_without_bare_columns_are_unchanged(sql):
    from sqlglot import parse_one

    from nl2sql.schema import Column, Schema, Table
    schema = Schema("s", "duckdb", (Table("emp", (Column("name", "TEXT"), Column("dept", "TEXT"),
                                                  Column("salary", "INTEGER"))),))
    for dialect in ("duckdb", "postgres"):
        tree = parse_one(sql, read="sqlite")
        before = tree.sql(dialect)
        aggregate_bare_columns(tree, dialect, schema)
        assert tree.sql(dialect) == before


def test_sqlite_and_mysql_targets_are_left_as_written(bare_sqlite, settings):
    wh = open_warehouse(bare_sqlite, settings)
    try:
        sql = validate("SELECT name, max(salary) FROM emp", introspect(wh, sample_values=0), settings=settings).sql
    finally:
        wh.close()
    assert "ANY_VALUE" not in sql.upper() and "ARG_MAX" not in sql.upper()
