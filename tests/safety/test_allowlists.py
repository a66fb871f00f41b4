"""The fail-closed allowlists: functions (per dialect, on the text that runs) and tables (the connected schema),
their settings, and the grammar's functions on every engine."""
from __future__ import annotations

import pytest

import nl2sql
from nl2sql.errors import UnsafeSQLError
from nl2sql.validate import FunctionPolicy, check_functions, fold, parse_one_query

ENGINES = ["duckdb", "sqlite", "postgres", "mariadb"]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_refusals_name_the_function_and_the_setting(engine_name, request, safety_settings):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    with pytest.raises(UnsafeSQLError) as e:
        nl2sql.execute("SELECT version()", db=engine.db, settings=safety_settings)
    assert "version()" in str(e.value).lower() and "NL2SQL_EXTRA_FUNCTIONS" in e.value.hint


@pytest.mark.parametrize("engine_name", ["duckdb", "postgres", "mariadb"])  # SQLite has sqlite_version() instead
def test_extra_functions_extend_the_list(engine_name, request, safety_settings):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    extended = safety_settings.replace(extra_functions="version, other_function")
    res = nl2sql.execute("SELECT version()", db=engine.db, settings=extended)
    assert str(res.df.iloc[0, 0])


def test_extra_functions_on_sqlite_reach_the_authorizer(sqlite_engine, safety_settings):
    """SQLite's own authorizer uses the same list: a name added there runs, and without it the engine refuses."""
    extended = safety_settings.replace(extra_functions="sqlite_version")
    assert nl2sql.execute("SELECT sqlite_version()", db=sqlite_engine.db, settings=extended).df.iloc[0, 0]
    with pytest.raises(UnsafeSQLError):
        nl2sql.execute("SELECT sqlite_version()", db=sqlite_engine.db, settings=safety_settings)


@pytest.mark.parametrize("engine_name,table", [("postgres", "information_schema.tables"),
                                               ("mariadb", "information_schema.tables"),
                                               ("duckdb", "information_schema.tables"),
                                               ("sqlite", "sqlite_master")])
def test_extra_tables_extend_the_list(engine_name, table, request, safety_settings):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    sql = f"SELECT COUNT(*) FROM {table}"
    with pytest.raises(UnsafeSQLError) as e:
        nl2sql.execute(sql, db=engine.db, settings=safety_settings)
    assert "NL2SQL_EXTRA_TABLES" in e.value.hint
    schema = table.split(".")[0] + ".*" if "." in table else table
    assert int(nl2sql.execute(sql, db=engine.db, settings=safety_settings.replace(extra_tables=schema)).df.iloc[0, 0]) > 0


def test_a_table_created_after_connecting_is_readable(postgres_engine, safety_settings):
    import time

    import psycopg
    from nl2sql.api import default_pipeline
    default_pipeline(safety_settings).warehouse(postgres_engine.db).table_allowlist()  # cached before the table exists
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=nl2sql_safety", autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS late_table")
        con.execute("CREATE TABLE late_table (a INTEGER)")
        try:
            time.sleep(2.1)  # the cache is re-read at most every 2 s
            res = nl2sql.execute("SELECT COUNT(*) FROM late_table", db=postgres_engine.db, settings=safety_settings)
            assert int(res.df.iloc[0, 0]) == 0
        finally:
            con.execute("DROP TABLE late_table")


@pytest.mark.parametrize("dialect", ["sqlite", "duckdb", "postgres", "mysql"])
def test_every_grammar_function_is_allowed_on_every_dialect(dialect):
    """What the model may write (nl2sql/grammar.py) must pass the allowlist once transpiled to each engine."""
    from nl2sql.grammar import AGGREGATES, FUNCTIONS
    from nl2sql.schema import Column, Schema, Table
    from nl2sql.validate import validate
    schema = Schema("t", dialect, (Table("t", (Column("a", "INTEGER"), Column("s", "TEXT"), Column("d", "TEXT"))),))
    calls = {
        "cast": "CAST(a AS TEXT)", "extract": "EXTRACT(YEAR FROM d)", "current_date": "CURRENT_DATE",
        "substr": "substr(s, 1, 2)", "substring": "substring(s, 1, 2)", "replace": "replace(s, 'a', 'b')",
        "instr": "instr(s, 'a')", "iif": "iif(a > 1, 1, 2)", "strftime": "strftime('%Y', d)",
        "printf": "printf('%d', a)", "power": "power(a, 2)", "nullif": "nullif(a, 1)", "ifnull": "ifnull(a, 1)",
        "coalesce": "coalesce(a, 1)", "min": "min(a)", "max": "max(a)", "concat": "concat(s, s)",
        "date_trunc": "date_trunc('month', d)", "round": "round(a, 1)", "group_concat": "group_concat(s)",
        "now": "now()", "random": "random()", "date": "date(d)", "time": "time(d)", "datetime": "datetime(d)",
        "julianday": "julianday(d)",
    }
    for name in dict.fromkeys(FUNCTIONS + AGGREGATES):
        call = calls.get(name, f"{name}(a)")
        validate(f"SELECT {call} FROM t", schema)  # raises if refused


@pytest.mark.parametrize("name,expected", [("ſleep", "sleep"), ("ＳＬＥＥＰ", "sleep"), ("pg_read_fıle", "pg_read_fıle"),
                                           ("get_locK", "get_lock")])
def test_fold_is_nfkc_casefold(name, expected):
    assert fold(name) == expected


@pytest.mark.parametrize("sql", ["SELECT ſleep(5)", "SELECT ＳＬＥＥＰ(5)", "SELECT pg_read_fıle('x')",
                                 "SELECT get_locK('x', 0)", "SELECT \"sleep\"(5)"])
def test_case_mapped_names_are_refused_in_every_dialect(sql):
    for dialect in ["sqlite", "duckdb", "postgres", "mysql"]:
        with pytest.raises(UnsafeSQLError):
            parse_one_query(sql.replace('"', "`") if dialect == "mysql" else sql, read=dialect)


def test_size_caps_follow_the_setting():
    big = "SELECT repeat('x', 200000)"
    with pytest.raises(UnsafeSQLError, match="NL2SQL_MAX_FUNCTION_SIZE"):
        parse_one_query(big, read="duckdb", functions=FunctionPolicy("duckdb"))
    parse_one_query(big, read="duckdb", functions=FunctionPolicy("duckdb", max_size=300_000))


def test_validate_takes_the_extra_functions_from_its_settings(settings):
    from nl2sql.schema import Column, Schema, Table
    from nl2sql.validate import validate
    schema = Schema("t", "postgres", (Table("t", (Column("a", "INTEGER"),)),))
    with pytest.raises(UnsafeSQLError, match="NL2SQL_EXTRA_FUNCTIONS"):
        validate("SELECT version() FROM t", schema)
    assert "VERSION()" in validate("SELECT version() FROM t", schema,
                                   settings=settings.replace(extra_functions="version")).sql
