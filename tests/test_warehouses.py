"""Real engines: introspection, guarded execution, read-only engines, limits that stop queries."""
import hashlib
from pathlib import Path

import pytest

from nl2sql.config import Settings
from nl2sql.errors import ConnectError, ExecutionError, QueryTimeout, UnsafeSQLError
from nl2sql.executor import run_checked
from nl2sql.schema import introspect
from nl2sql.warehouse import open_warehouse

from conftest import SINGERS


def _checksum(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_introspection_finds_tables_keys_comments_samples(any_db, settings):
    wh = open_warehouse(any_db, settings)
    schema = introspect(wh, sample_values=3)
    singer = schema.table("singer")
    assert singer is not None and schema.table("concert") is not None
    assert singer.column("singer_id").primary_key
    assert len(singer.column("country").samples) > 0
    fks = [fk for t in schema.tables for fk in t.foreign_keys]
    assert any(fk.ref_table.lower() == "singer" and fk.ref_column.lower() == "singer_id" for fk in fks)
    if wh.dialect != "sqlite":  # Spider's SQLite file has no comments
        assert singer.column("country").comment == "Where the singer comes from"


def test_guarded_query_returns_frame_and_row_cap(any_db, settings):
    wh = open_warehouse(any_db, settings)
    capped = settings.replace(row_limit=2)
    res = run_checked(wh, "SELECT name FROM singer ORDER BY singer_id", capped)
    assert list(res.df.iloc[:, 0]) == [SINGERS[0][1], SINGERS[1][1]]
    assert res.truncated is True
    full = run_checked(wh, "SELECT COUNT(*) FROM singer", settings)
    assert full.truncated is False and int(full.df.iloc[0, 0]) == 6


@pytest.mark.parametrize("sql", ["DELETE FROM singer", "UPDATE singer SET age = 0", "DROP TABLE concert",
                                 "CREATE TABLE x (a INTEGER)"])
def test_engine_layer_alone_refuses_writes(any_db, settings, sql):
    """Bypass the validator (call the warehouse directly): the read-only engine must still refuse."""
    wh = open_warehouse(any_db, settings)
    with pytest.raises(ExecutionError):
        wh.run(sql, row_limit=10, timeout=5)
    assert int(run_checked(wh, "SELECT COUNT(*) FROM singer", settings).df.iloc[0, 0]) == 6


def test_validator_refuses_writes_first(any_db, settings):
    wh = open_warehouse(any_db, settings)
    with pytest.raises(UnsafeSQLError):
        run_checked(wh, "SELECT 1; DELETE FROM singer", settings)


def test_statement_timeout_stops_query_and_next_one_works(any_db, settings):
    wh = open_warehouse(any_db, settings)
    slow = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 100000000) "
            "SELECT COUNT(*) FROM r")
    if wh.dialect == "mysql":
        slow = "SELECT COUNT(*) FROM singer a, singer b, singer c, singer d, singer e, singer f, singer g, singer h, singer i, singer j"
    short = settings.replace(statement_timeout=0.5)
    with pytest.raises(QueryTimeout):
        wh.run(slow, row_limit=10, timeout=short.statement_timeout)
    assert int(run_checked(wh, "SELECT COUNT(*) FROM singer", settings).df.iloc[0, 0]) == 6


def test_sqlite_file_is_unchanged(sqlite_db, settings):
    before = _checksum(sqlite_db)
    wh = open_warehouse(str(sqlite_db), settings)
    for sql in ["DELETE FROM singer", "DROP TABLE singer"]:
        with pytest.raises(ExecutionError):
            wh.run(sql, row_limit=10, timeout=5)
    assert _checksum(sqlite_db) == before


def test_duckdb_has_no_file_access_and_locked_config(duckdb_file, settings, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    wh = open_warehouse(str(duckdb_file), settings)
    for sql in [f"SELECT * FROM read_csv('{secret}')", "SET enable_external_access = true",
                f"COPY singer TO '{tmp_path / 'out.csv'}'"]:
        with pytest.raises(ExecutionError):
            wh.run(sql, row_limit=10, timeout=5)
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("db,message", [
    ("/nonexistent/file.sqlite", "No database file"),
    ("postgresql+psycopg://postgres@127.0.0.1:1/x", "Cannot connect"),
    ("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/x", "Cannot connect"),
    ("notadriver://x", "Cannot use the database URL"),
    ("", "db must be"),
])
def test_bad_connections_have_clear_errors_without_secrets(db, message, settings):
    with pytest.raises(ConnectError) as e:
        open_warehouse(db, settings)
    assert message in str(e.value) and "s3cret" not in str(e.value)
