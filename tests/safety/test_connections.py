"""Connection URLs and paths a user may type (the app's connection picker): checked, failing closed, and
never echoing a credential — in the error, or in any log record."""
from __future__ import annotations

import logging

import pytest

from nl2sql.errors import ConfigError, ConnectError
from nl2sql.roles import readonly_role_sql
from nl2sql.warehouse import open_warehouse

PG = "postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/nl2sql_safety"
MY = "mysql+pymysql://root:s3cret@127.0.0.1:3306/nl2sql_safety"

REFUSED = [
    # PostgreSQL: libpq options that change the session, read files, or pick up other credentials
    (PG + "?options=-c%20default_transaction_read_only%3Doff", "'options'"),
    (PG + "?passfile=/etc/passwd", "'passfile'"),
    (PG + "?sslkey=/etc/shadow&sslmode=require", "'sslkey'"),
    (PG + "?sslrootcert=/etc/passwd", "'sslrootcert'"),
    (PG + "?service=admin", "'service'"),
    (PG + "?sslpassword=s3cret", "'sslpassword'"),
    (PG + "?plugin=evil", "'plugin'"),
    ("postgresql+asyncpg://postgres:s3cret@127.0.0.1/x", "driver 'asyncpg'"),
    ("postgresql+psycopg2://postgres:s3cret@127.0.0.1/x", "driver 'psycopg2'"),
    # MySQL/MariaDB: options that run SQL at connect, read client files, or allow multi-statements
    (MY + "?init_command=SET%20GLOBAL%20general_log%3D1", "'init_command'"),
    (MY + "?local_infile=1", "'local_infile'"),
    (MY + "?read_default_file=/etc/mysql/debian.cnf", "'read_default_file'"),
    (MY + "?client_flag=65536", "'client_flag'"),
    (MY + "?ssl_ca=/etc/passwd", "'ssl_ca'"),
    (MY + "?password=s3cret", "'password'"),
    ("mysql+mysqlconnector://root:s3cret@127.0.0.1/x", "driver 'mysqlconnector'"),
    # SQLite and DuckDB: URI filenames and options that reopen the file writable or attach others
    ("sqlite:///file:{db}?mode=rwc&uri=true", "'mode'"),
    ("sqlite:///file:{db}", "URI filenames"),
    ("sqlite:///{db}?mode=rw", "'mode'"),
    ("sqlite+pysqlcipher:///{db}", "driver 'pysqlcipher'"),
    ("duckdb:///{duck}?access_mode=read_write", "take no options"),
    # other backends and non-files
    ("mssql+pyodbc://sa:s3cret@host/db", "not 'mssql'"),
    ("oracle://scott:s3cret@host/db", "not 'oracle'"),
    ("sqlite:////dev/zero", "not a regular file"),
    ("/dev/null", "not a regular file"),
    ("sqlite:////nonexistent/dir/x.sqlite", "No SQLite file"),
    ("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/x", "Cannot connect"),
    ("postgresql+psycopg://nobody:s3cret@127.0.0.1:5432/nl2sql_safety", "Cannot connect"),
    ("mysql+pymysql://nobody:s3cret@127.0.0.1:3306/nl2sql_safety", "Cannot connect"),
    ("not a url://x", "malformed"),
]


@pytest.mark.parametrize("url,message", REFUSED)
def test_user_urls_are_checked(url, message, sqlite_engine, duckdb_engine, safety_settings, caplog):
    url = url.replace("{db}", sqlite_engine.db).replace("{duck}", duckdb_engine.db)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectError) as e:
        open_warehouse(url, safety_settings)
    text = str(e.value)
    assert message in text, text
    assert e.value.hint
    assert "s3cret" not in text and "s3cret" not in caplog.text, "a credential leaked"
    # no driver exception (which may quote the URL) travels along in the traceback
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__)


@pytest.mark.parametrize("url", [
    "postgresql://postgres@127.0.0.1:5432/nl2sql_safety?application_name=nl2sql&sslmode=disable",  # bare driver
    "mysql://root@127.0.0.1:3306/nl2sql_safety?charset=utf8mb4",
    "sqlite:///{db}",
    "{db}",
    "duckdb:///{duck}",
])
def test_ordinary_urls_open_read_only(url, sqlite_engine, duckdb_engine, postgres_engine, mariadb_engine,
                                      safety_settings):
    from nl2sql.errors import ExecutionError
    url = url.replace("{db}", sqlite_engine.db).replace("{duck}", duckdb_engine.db)
    wh = open_warehouse(url, safety_settings)
    assert wh.run("SELECT COUNT(*) FROM singer", row_limit=5, timeout=2)[1][0][0] == 6
    with pytest.raises(ExecutionError):
        wh.run("DELETE FROM singer", row_limit=5, timeout=2)


def test_nl2sql_own_files_and_paths_outside_the_allowed_ones_are_refused(sqlite_engine, safety_settings, tmp_path):
    import shutil
    log = safety_settings.data_dir / "querylog.sqlite"
    shutil.copy(sqlite_engine.db, log)  # stands in for the query log
    for db in (str(log), f"sqlite:///{log}"):
        with pytest.raises(ConnectError, match="nl2sql's own files"):
            open_warehouse(db, safety_settings)
    fenced = safety_settings.replace(allowed_db_paths=str(tmp_path))
    with pytest.raises(ConnectError, match="outside the directories"):
        open_warehouse(sqlite_engine.db, fenced)
    inside = tmp_path / "ok.sqlite"
    shutil.copy(sqlite_engine.db, inside)
    assert open_warehouse(f"sqlite:///{inside}", fenced).run("SELECT 1", row_limit=1, timeout=1)[1] == [(1,)]


def test_a_symlink_cannot_smuggle_a_path_past_the_fence(sqlite_engine, safety_settings, tmp_path):
    link = tmp_path / "innocent.sqlite"
    link.symlink_to(sqlite_engine.db)
    with pytest.raises(ConnectError, match="outside the directories"):
        open_warehouse(str(link), safety_settings.replace(allowed_db_paths=str(tmp_path)))


def test_display_name_and_errors_hide_the_password(postgres_engine, safety_settings):
    wh = open_warehouse("postgresql+psycopg://postgres:s3cret@127.0.0.1:5432/nl2sql_safety", safety_settings)
    assert "s3cret" not in wh.display_name
    from nl2sql.errors import ExecutionError
    with pytest.raises(ExecutionError) as e:
        wh.run("SELECT 's3cret' FROM no_such_table", row_limit=1, timeout=2)
    assert "s3cret" not in str(e.value)  # the password is scrubbed even when the SQL echoes it


@pytest.mark.parametrize("kwargs,message", [
    ({"dialect": "postgres", "role": "x; DROP ROLE postgres", "database": "d"}, "not a plain name"),
    ({"dialect": "postgres", "role": "r", "database": "d\"; --"}, "not a plain name"),
    ({"dialect": "mariadb", "role": "r", "database": "d", "host": "%' OR '1"}, "host pattern"),
    ({"dialect": "sqlite", "role": "r", "database": "d"}, "No read-only role recipe"),
])
def test_role_helper_refuses_names_it_cannot_quote(kwargs, message):
    dialect = kwargs.pop("dialect")
    with pytest.raises(ConfigError, match=message):
        readonly_role_sql(dialect, **kwargs)


def test_role_helper_password_is_quoted():
    sql = readonly_role_sql("postgres", "r", database="d", password="it's")
    assert "PASSWORD 'it''s'" in sql[0]
    assert readonly_role_sql("mariadb", "r", database="d", password="a'b")[0] == "CREATE USER 'r'@'%' IDENTIFIED BY 'a''b';"


def test_role_sql_cli(capsys):
    from nl2sql.cli import main
    assert main(["role-sql", "--dialect", "postgres", "--database", "shop"]) == 0
    out = capsys.readouterr().out
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO "nl2sql_ro";' in out
