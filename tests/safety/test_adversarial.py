"""Adversarial SQL through the one guarded path (nl2sql.execute), on DuckDB, SQLite, PostgreSQL and MariaDB.

Each case is (engines, SQL, expected). After every case: the database checksum is unchanged, the sentinel
file outside the data was neither read (its token appears nowhere) nor joined by new files, the session
settings are as before, and the next normal query succeeds. The write, file, extension and config cases run
a second time with the SQL checks switched off (executor._CHECK_SQL, a test-only switch) to prove the
engine layer alone holds; on the servers that run uses the SELECT-only login made by nl2sql.roles.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

import nl2sql
from nl2sql import executor
from nl2sql.errors import (ExecutionError, Nl2SqlError, QueryTimeout, ResourceLimitError, UnsafeSQLError,
                           ValidationError)

REJECTED = "rejected"   # refused before the database: ValidationError (UnsafeSQLError is one)
STOPPED = "stopped"     # reached the engine and was stopped by a limit or refused: ExecutionError family
OK = "ok"               # a control: must run and give the expected first value
BOUNDED = "bounded"     # either refused/stopped, or a result inside the row and size caps


@dataclass(frozen=True)
class Case:
    id: str
    kind: str            # write multi file extension config resource malformed huge unicode casefold catalog admin
                         # size control
    sql: str             # {secret} and {outside} are filled in per run
    engines: str = "DSPM"  # D duckdb, S sqlite, P postgres, M mariadb
    expect: str = REJECTED
    value: object = None       # OK: the first value of the first row
    truncated: bool = False    # OK: whether the caps cut the result
    engine_may_run: str = ""   # with the checks off, engines (letters) where it may run harmlessly


DEEP = "SELECT " + "(" * 3000 + "1" + ")" * 3000
WIDE = "SELECT " + "+".join(["1"] * 2000)
CARTESIAN = "SELECT COUNT(*) FROM " + ", ".join(f"singer s{i}" for i in range(14))

CASES = [
    # --- writes and DDL ------------------------------------------------------------------------------
    Case("delete", "write", "DELETE FROM singer"),
    Case("update", "write", "UPDATE singer SET age = 0"),
    Case("insert", "write", "INSERT INTO singer (singer_id, name) VALUES (99, 'x')"),
    Case("drop", "write", "DROP TABLE note"),
    Case("create", "write", "CREATE TABLE evil (a INTEGER)"),
    Case("alter", "write", "ALTER TABLE singer ADD COLUMN x INTEGER"),
    Case("truncate", "write", "TRUNCATE TABLE note", "DPM"),
    Case("replace", "write", "REPLACE INTO singer (singer_id, name) VALUES (1, 'x')", "SM"),
    Case("delete-in-cte", "write", "WITH d AS (DELETE FROM note RETURNING *) SELECT * FROM d", "DSP"),
    Case("select-into", "write", "SELECT * INTO evil FROM singer", "DP"),
    Case("temp-table-shadow", "write", "CREATE TEMP TABLE singer AS SELECT 99 AS singer_id"),
    Case("for-update", "write", "SELECT * FROM singer FOR UPDATE", "PM"),
    Case("explain-analyze", "write", "EXPLAIN ANALYZE DELETE FROM singer", "DP"),
    Case("analyze-delete", "write", "ANALYZE DELETE FROM singer", "M"),
    Case("explain-delete", "write", "EXPLAIN DELETE FROM singer", "S"),
    Case("do-block", "write", "DO $$ BEGIN DELETE FROM singer; END $$", "P"),
    Case("prepare-delete", "write", "PREPARE p AS DELETE FROM singer", "P"),
    Case("prepare-from-string", "write", "PREPARE s FROM 'DELETE FROM singer'", "M"),
    # --- several statements -----------------------------------------------------------------------
    Case("stacked", "multi", "SELECT 1; DROP TABLE note"),
    # libpq ends the text at the NUL: PostgreSQL runs the harmless first half, never the DROP
    Case("nul-byte", "multi", "SELECT name FROM singer\x00; DROP TABLE note", engine_may_run="P"),
    Case("line-comment-then-stmt", "multi", "SELECT name FROM singer -- harmless\n; DROP TABLE note"),
    Case("commit-escape", "multi", "COMMIT; DROP TABLE note"),
    Case("readonly-off-escape", "multi", "SELECT 1; SET default_transaction_read_only = off; DROP TABLE note", "P"),
    # only MySQL/MariaDB run the body of /*! */; elsewhere it is a comment
    Case("mysql-exec-comment", "multi", "SELECT 1 /*!50000 ; DROP TABLE note */", engine_may_run="DSP"),
    # without the FILE privilege LOAD_FILE() gives NULL: it may run, but reads nothing
    Case("mysql-exec-comment-file", "file", "SELECT 1 /*!50000 , LOAD_FILE('{secret}') */", "M", engine_may_run="M"),
    # --- files and network --------------------------------------------------------------------------
    Case("read-csv", "file", "SELECT * FROM read_csv('{secret}')", "D"),
    Case("read-text", "file", "SELECT * FROM read_text('{secret}')", "D"),
    Case("file-as-table", "file", "SELECT * FROM '{secret}'", "D"),
    Case("glob", "file", "SELECT * FROM glob('{outside}/*')", "D"),
    Case("lateral-reader", "file", "SELECT * FROM singer, LATERAL read_csv('{secret}')", "D"),
    Case("sniff-csv", "file", "SELECT * FROM sniff_csv('{secret}')", "D"),
    Case("copy-to", "file", "COPY singer TO '{outside}/out.csv'", "DP"),
    Case("url-parquet", "file", "SELECT * FROM read_parquet('https://example.com/x.parquet')", "D"),
    Case("export-database", "file", "EXPORT DATABASE '{outside}/export'", "D"),
    Case("pg-read-file", "file", "SELECT pg_read_file('{secret}')", "P"),
    Case("pg-read-file-qualified", "file", "SELECT pg_catalog.pg_read_file('{secret}')", "P"),
    Case("pg-read-file-quoted", "file", "SELECT \"pg_read_file\"('{secret}')", "P"),
    Case("copy-program", "file", "COPY (SELECT 1) TO PROGRAM 'touch {outside}/pwned'", "P"),
    Case("lo-import", "file", "SELECT lo_import('{secret}')", "P"),
    Case("dblink", "file", "SELECT * FROM dblink('host=127.0.0.1', 'SELECT 1') AS t(a INT)", "P"),
    Case("load-file", "file", "SELECT LOAD_FILE('{secret}')", "M", engine_may_run="M"),
    Case("into-outfile", "file", "SELECT name FROM singer INTO OUTFILE '{outside}/out.txt'", "M"),
    Case("into-dumpfile", "file", "SELECT 1 INTO DUMPFILE '{outside}/out.bin'", "M"),
    Case("load-data", "file", "LOAD DATA LOCAL INFILE '{secret}' INTO TABLE note", "M"),
    Case("attach", "file", "ATTACH DATABASE '{outside}/evil.db' AS evil", "DS"),
    Case("vacuum-into", "file", "VACUUM INTO '{outside}/copy.db'", "S"),
    # --- extensions -----------------------------------------------------------------------------------
    Case("install", "extension", "INSTALL httpfs", "D"),
    Case("load", "extension", "LOAD httpfs", "D"),
    Case("load-extension-fn", "extension", "SELECT load_extension('{outside}/evil')", "S"),
    Case("create-extension", "extension", "CREATE EXTENSION dblink", "P"),
    Case("install-soname", "extension", "INSTALL SONAME 'ha_connect'", "M"),
    # --- configuration ------------------------------------------------------------------------------
    Case("set-external-access", "config", "SET enable_external_access = true", "D"),
    Case("set-memory", "config", "SET memory_limit = '100GB'", "D"),
    Case("pragma-threads", "config", "PRAGMA threads = 64", "D"),
    Case("set-search-path", "config", "SET search_path = 'temp'", "D"),
    Case("reset-all", "config", "RESET ALL", "DP"),
    Case("call-pragma", "config", "CALL pragma_version()", "D"),
    Case("set-timeout", "config", "SET statement_timeout = 0", "P"),
    Case("set-readonly-off", "config", "SET default_transaction_read_only = off", "P"),
    Case("set-config-fn", "config", "SELECT set_config('default_transaction_read_only', 'off', false)", "P",
         engine_may_run="P"),  # a plain function call; the transaction is rolled back, so it cannot stick
    Case("alter-system", "config", "ALTER SYSTEM SET work_mem = '1GB'", "P"),
    Case("set-role", "config", "SET ROLE postgres", "P"),
    Case("set-global", "config", "SET GLOBAL general_log = 1", "M"),
    Case("set-sql-mode", "config", "SET SESSION sql_mode = 'ANSI_QUOTES'", "M"),
    Case("set-tx-rw", "config", "SET SESSION TRANSACTION READ WRITE", "M"),
    Case("server-variable", "config", "SELECT @@secure_file_priv", "M", engine_may_run="M"),
    Case("pragma-writable", "config", "PRAGMA writable_schema = 1", "S"),
    Case("pragma-table-fn", "config", "SELECT * FROM pragma_table_info('singer')", "S"),
    Case("begin", "config", "BEGIN"),
    Case("detach", "config", "DETACH DATABASE safety", "DS"),
    Case("do-sleep", "config", "DO SLEEP(5)", "M"),
    # --- resource exhaustion ---------------------------------------------------------------------------
    Case("cartesian", "resource", CARTESIAN, expect=STOPPED),
    Case("recursive-cte", "resource", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
         "SELECT COUNT(*) FROM r", "DSP", expect=STOPPED),
    # MariaDB ends the recursion itself at cte_max_recursion_depth (1000)
    Case("recursive-cte-mariadb", "resource", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
         "SELECT COUNT(*) FROM r", "M", expect=BOUNDED),
    Case("range-in-from", "resource", "SELECT COUNT(*) FROM range(1000000000000)", "D"),
    # a series longer than NL2SQL_MAX_FUNCTION_SIZE is refused before it starts (one call, not interruptible)
    Case("huge-unnest", "resource", "SELECT SUM(x) FROM (SELECT UNNEST(range(100000000000)) AS x) AS t", "D"),
    Case("generate-series-select", "resource",
         "SELECT COUNT(*) FROM (SELECT generate_series(1, 100000000000) AS x) AS t", "P"),
    Case("pg-sleep", "resource", "SELECT pg_sleep(30)", "P"),
    Case("sleep", "resource", "SELECT SLEEP(30)", "M"),
    Case("benchmark", "resource", "SELECT BENCHMARK(10000000000, MD5('a'))", "M"),
    Case("randomblob", "resource", "SELECT randomblob(2000000000)", "S"),
    Case("huge-printf", "resource", "SELECT printf('%.*c', 50000000, 'x')", "S", expect=BOUNDED),
    Case("doubling-string", "resource", "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r "
         "WHERE length(s) < 100000000) SELECT length(max(s)) FROM r", "S", expect=STOPPED),
    Case("huge-value", "resource", "SELECT repeat('x', 20000000)", "DPM", expect=BOUNDED),
    # --- malformed and huge input ------------------------------------------------------------------
    Case("typo", "malformed", "SELEC name FROM singer"),
    Case("unbalanced", "malformed", "SELECT (((name FROM singer"),
    Case("unterminated-string", "malformed", "SELECT 'abc FROM singer"),
    Case("empty", "malformed", "   \n "),
    Case("deep-nesting", "malformed", DEEP),
    Case("long-expression", "malformed", WIDE),
    Case("huge-literal", "huge", "SELECT name FROM singer WHERE name = '" + "x" * 1_000_000 + "'"),
    Case("many-statements", "huge", "SELECT 1;" * 5000),
    # --- unicode look-alikes and invisible characters ------------------------------------------------
    Case("fullwidth-drop", "unicode", "ＤＲＯＰ TABLE note"),
    Case("fullwidth-semicolon", "unicode", "SELECT 1；DROP TABLE note"),
    Case("zero-width-space", "unicode", "DR\u200bOP TABLE note"),
    Case("bidi-override", "unicode", "SELECT name FROM singer WHERE name = 'a\u202e'"),
    Case("cyrillic-s", "unicode", "\u0455ELECT name FROM singer"),
    Case("line-separator", "unicode", "SELECT name FROM singer\u2028; DROP TABLE note"),
    Case("tag-characters", "unicode", "SELECT 1\U000e0020\U000e0044\U000e0052\U000e004f\U000e0050"),
    # --- function names that case-map or normalise to a denied one (checked on the text that runs) ------
    Case("long-s-sleep", "casefold", "SELECT \u017fleep(5)", "M"),                        # ſ upper-cases to S
    Case("dotless-i-read-file", "file", "SELECT pg_read_f\u0131le('{secret}')", "P"),      # ı upper-cases to I
    Case("fullwidth-load-file", "file", "SELECT \uff2c\uff2f\uff21\uff24_\uff26\uff29\uff2c\uff25('{secret}')", "M",
         engine_may_run="M"),  # NFKC: LOAD_FILE; without FILE the engine gives NULL at most
    Case("kelvin-get-lock", "casefold", "SELECT get_loc\u212a('nl2sql', 0)", "M"),       # K (Kelvin) lower-cases to k
    Case("ligature-read-text", "file", "SELECT * FROM singer, read_text('{secret}')", "D"),
    Case("long-s-current-setting", "casefold", "SELECT current_\u017fetting('memory_limit')", "DP"),
    Case("bare-user", "casefold", "SELECT user, current_role", "P", engine_may_run="P"),  # the login name only
    Case("bare-session-user", "casefold", "SELECT session_user", "DP", engine_may_run="DP"),
    Case("unknown-function", "casefold", "SELECT version()", engine_may_run="DPM"),  # harmless, but not listed
    Case("quoted-function", "file", "SELECT \"PG_READ_FILE\"('{secret}')", "P"),
    Case("qualified-allowed-name", "casefold", "SELECT pg_catalog.upper(name) FROM singer", "P", engine_may_run="P"),
    # --- functions that run SQL given as a string -------------------------------------------------------
    Case("ts-stat", "file", "SELECT * FROM singer WHERE EXISTS (SELECT ts_stat('SELECT to_tsvector(pg_read_file(''{secret}''))'))", "P"),
    Case("ts-rewrite", "file", "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, to_tsquery(pg_read_file(''{secret}''))')", "P"),
    Case("query-to-xml", "file", "SELECT query_to_xml('SELECT pg_read_file(''{secret}'')', true, true, '')", "P"),
    # the SELECT-only login may run these three (they export what it can read anyway)
    Case("database-to-xml", "file", "SELECT database_to_xml(true, true, '')", "P", engine_may_run="P"),
    Case("schema-to-xml", "file", "SELECT schema_to_xml('pg_catalog', true, true, '')", "P", engine_may_run="P"),
    Case("table-to-xmlschema", "file", "SELECT table_to_xmlschema('pg_authid', true, true, '')", "P",
         engine_may_run="P"),
    # --- system catalogs and other schemas ------------------------------------------------------------
    Case("pg-shadow", "catalog", "SELECT usename, passwd FROM pg_shadow", "P"),
    Case("pg-user", "catalog", "SELECT usename FROM pg_user", "P"),
    Case("pg-stat-activity", "catalog", "SELECT query FROM pg_stat_activity", "P"),
    Case("pg-settings", "catalog", "SELECT name, setting FROM pg_catalog.pg_settings", "P"),
    Case("pg-file-settings", "catalog", "SELECT * FROM pg_file_settings", "P"),
    Case("pg-hba", "catalog", "SELECT * FROM pg_hba_file_rules", "P"),
    Case("cte-scope-escape", "catalog",
         "SELECT * FROM (WITH pg_user AS (SELECT 1 AS a) SELECT a FROM pg_user) AS x, pg_user", "P"),
    Case("cte-forward-reference", "catalog",
         "WITH a AS (SELECT * FROM pg_user), pg_user AS (SELECT 1 AS b) SELECT * FROM a", "P"),
    Case("information-schema", "catalog", "SELECT table_name FROM information_schema.tables", "DPM"),
    Case("mysql-user", "catalog", "SELECT user, password FROM mysql.user", "M"),
    Case("processlist", "catalog", "SELECT info FROM information_schema.processlist", "M"),
    Case("global-variables", "catalog", "SELECT * FROM information_schema.global_variables", "M"),
    Case("performance-schema", "catalog", "SELECT * FROM performance_schema.threads", "M"),
    Case("duckdb-pg-settings", "catalog", "SELECT * FROM pg_catalog.pg_settings", "D"),
    Case("duckdb-settings-view", "catalog", "SELECT * FROM duckdb_settings", "D"),
    Case("sqlite-master", "catalog", "SELECT sql FROM sqlite_master", "S"),
    Case("sqlite-schema-qualified", "catalog", "SELECT sql FROM main.sqlite_schema", "S"),
    Case("other-catalog", "catalog", "SELECT * FROM system.main.duckdb_settings", "D"),
    # --- admin functions that leave state on the session --------------------------------------------
    Case("backup-start", "admin", "SELECT pg_backup_start('nl2sql')", "P"),
    Case("advisory-lock", "admin", "SELECT pg_advisory_lock(42)", "P", engine_may_run="P"),  # session discarded
    Case("log-writer", "admin", "SELECT pg_log_backend_memory_contexts(pg_backend_pid())", "P"),
    Case("user-lock", "admin", "SELECT GET_LOCK('nl2sql', 0)", "M", engine_may_run="M"),  # lock released
    # --- one call that builds a huge value or list: capped where constant, refused where not ---------------
    Case("repeat-huge", "size", "SELECT length(repeat('ab', 500000000))", "DPM"),
    Case("repeat-by-column", "size", "SELECT length(repeat(name, age * 100000000)) FROM singer", "DPM"),
    Case("nested-repeat", "size", "SELECT length(repeat(repeat('x', 100000), 10000))", "DPM"),
    Case("pad-in-repeat", "size", "SELECT length(repeat(lpad('x', 90000, 'y'), 90000))", "DPM"),
    Case("lpad-huge", "size", "SELECT length(lpad('x', 1000000000, 'y'))", "DPM"),
    Case("space-huge", "size", "SELECT length(space(1000000000))", "M"),
    Case("printf-star-width", "size", "SELECT length(printf('%.*c', 1000000000, 'x'))", "SD"),
    Case("printf-big-width", "size", "SELECT length(printf('%1000000000s', 'x'))", "S"),
    Case("format-big-width", "size", "SELECT length(format('%1000000000s', 'x'))", "P"),
    Case("list-sort-range", "size", "SELECT list_sort(range(1000000000))[1]", "D"),
    Case("series-by-column", "size", "SELECT COUNT(*) FROM (SELECT generate_series(1, age * 100000000) AS x "
         "FROM singer) AS t", "P"),
    # --- controls for the allowlists and the former false positives ------------------------------------
    Case("glob-operator", "control", "SELECT COUNT(*) FROM singer WHERE name GLOB 'J*'", "S", expect=OK, value=3),
    Case("from-dual", "control", "SELECT 1 FROM DUAL", "M", expect=OK, value=1),
    Case("regexp-operator", "control", "SELECT COUNT(*) FROM singer WHERE name REGEXP '^J'", "M", expect=OK, value=3),
    Case("upper-allowed", "control", "SELECT UPPER(name) FROM singer WHERE singer_id = 1", expect=OK,
         value="JOE SHARP"),
    Case("small-repeat", "control", "SELECT repeat('ab', 3)", "DPM", expect=OK, value="ababab"),
    Case("small-lpad", "control", "SELECT lpad('7', 3, '0')", "DPM", expect=OK, value="007"),
    Case("small-printf", "control", "SELECT printf('%5.1f', 3.14159)", "S", expect=OK, value="  3.1"),
    Case("cte-named-like-catalog", "control", "WITH pg_user AS (SELECT 7 AS a) SELECT a FROM pg_user",
         expect=OK, value=7),
    Case("derived-table", "control", "SELECT COUNT(*) FROM (SELECT * FROM singer WHERE age > 30) AS t",
         expect=OK, value=4),
    Case("schema-qualified-own", "control", "SELECT COUNT(*) FROM main.singer", "DS", expect=OK, value=6),
    Case("schema-qualified-public", "control", "SELECT COUNT(*) FROM public.singer", "P", expect=OK, value=6),
    Case("schema-qualified-db", "control", "SELECT COUNT(*) FROM nl2sql_safety.singer", "M", expect=OK, value=6),
    Case("date-functions", "control", "SELECT COUNT(*) FROM singer WHERE age BETWEEN 20 AND 60 "
         "AND CAST(age AS TEXT) LIKE '%' AND COALESCE(country, '') <> ''", "DSP", expect=OK, value=6),
    Case("small-series", "control", "SELECT COUNT(*) FROM (SELECT generate_series(1, 10) AS x) AS t", "P",
         expect=OK, value=10),
    # --- controls: must still work -------------------------------------------------------------------
    Case("string-with-drop", "control", "SELECT ';DROP TABLE t'", expect=OK, value=";DROP TABLE t"),
    Case("delete-flag-column", "control", "SELECT delete_flag FROM singer WHERE singer_id = 6", expect=OK, value=1),
    Case("legit-cte", "control", "WITH s AS (SELECT name FROM singer WHERE age > 30) SELECT COUNT(*) FROM s",
         expect=OK, value=4),
    Case("comment-hiding-stmt", "control", "SELECT COUNT(*) FROM singer /* ; DROP TABLE note */", expect=OK, value=6),
    Case("like-percent", "control", "SELECT COUNT(*) FROM singer WHERE name LIKE '%o%'", expect=OK, value=4),
    Case("unicode-text", "control", "SELECT 'café ☕' AS word", expect=OK, value="café ☕"),
    Case("row-cap", "control", "SELECT a.name FROM singer a, singer b, singer c", expect=OK, value="Joe Sharp",
         truncated=True),
    Case("select-from-note", "control", "SELECT COUNT(*) FROM note", expect=OK, value=2),
]

LETTER = {"duckdb": "D", "sqlite": "S", "postgres": "P", "mariadb": "M"}
ENGINE_ONLY_KINDS = {"write", "multi", "file", "extension", "config", "admin", "casefold"}  # rerun with the SQL checks off


def _params(kinds=None):
    out = []
    for engine in LETTER:
        for c in CASES:
            if LETTER[engine] in c.engines and (kinds is None or c.kind in kinds):
                out.append(pytest.param(engine, c, id=f"{engine}-{c.kind}-{c.id}"))
    return out


def _fill(sql: str, outside) -> str:
    return sql.replace("{secret}", str(outside.secret)).replace("{outside}", str(outside.dir))


def _state(engine, outside, wh, settings):
    """Everything a case must leave as it found it."""
    files = sorted(p.name for p in engine.files_dir.iterdir()) if engine.files_dir else None
    probe = wh.run(engine.probe, row_limit=5, timeout=settings.statement_timeout)[1] if engine.probe else None
    return engine.checksum(), outside.listing(), files, probe


def _assert_intact(before, engine, outside, wh, settings, texts, db):
    after = _state(engine, outside, wh, settings)
    assert after[0] == before[0], "the database changed"
    assert after[1] == before[1], "a file appeared or changed outside the data"
    assert after[2] == before[2], "a file appeared beside the database file"
    assert after[3] == before[3], "a session setting changed"
    for text in texts:
        assert outside.token not in text, "the sentinel file was read"
    assert os.getpid() > 0  # still here: no crash took the process down (see also test_malformed_in_subprocess)
    res = nl2sql.execute("SELECT COUNT(*) FROM singer", db=db, settings=settings)
    assert int(res.df.iloc[0, 0]) == 6, "the next normal query failed"


def _run_case(engine, case, outside, settings, *, db):
    from nl2sql.api import default_pipeline
    wh = default_pipeline(settings).warehouse(db)
    before = _state(engine, outside, wh, settings)
    sql = _fill(case.sql, outside)
    error, result = None, None
    try:
        result = nl2sql.execute(sql, db=db, settings=settings)
    except Nl2SqlError as e:
        error = e
    texts = [str(error) if error else "", "" if result is None else result.df.to_csv()]
    _assert_intact(before, engine, outside, wh, settings, texts, db)
    return error, result


@pytest.mark.parametrize("engine_name,case", _params())
def test_guarded_path(engine_name, case, request, outside, safety_settings):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    error, result = _run_case(engine, case, outside, safety_settings, db=engine.db)
    if case.expect == REJECTED:
        assert isinstance(error, ValidationError), f"expected a rejection before the database, got {error!r}"
        assert error.hint, "every rejection says what to do"
    elif case.expect == STOPPED:
        assert isinstance(error, ExecutionError), f"expected the engine to stop it, got {error!r} / {result}"
    elif case.expect == BOUNDED:
        if error is None:
            assert len(result.df) <= safety_settings.row_limit
            assert result.df.to_csv().__len__() <= safety_settings.max_result_bytes + 1000
        else:
            assert isinstance(error, (ExecutionError, ValidationError))
    else:
        assert error is None, f"a control failed: {error}"
        assert result.df.iloc[0, 0] == case.value
        assert result.truncated is case.truncated
    if error is not None:
        assert "Traceback" not in str(error) and len(str(error)) < 700


@pytest.mark.parametrize("engine_name,case", _params(ENGINE_ONLY_KINDS))
def test_engine_layer_alone(engine_name, case, request, outside, safety_settings, monkeypatch):
    """The same cases with the SQL checks off: the read-only engine (and on servers the SELECT-only login)
    must still refuse, or run them without effect."""
    engine = request.getfixturevalue(f"{engine_name}_engine")
    monkeypatch.setattr(executor, "_CHECK_SQL", False)
    error, result = _run_case(engine, case, outside, safety_settings, db=engine.ro_db)
    if LETTER[engine_name] in case.engine_may_run:
        assert error is None or isinstance(error, ExecutionError)
    else:
        assert isinstance(error, ExecutionError), f"the engine let it run: {result and result.df}"


def test_the_switch_is_not_a_setting():
    """The test-only switch must not be reachable from the environment or from Settings."""
    assert "check_sql" not in " ".join(nl2sql.Settings.names()).lower()
    assert executor._CHECK_SQL is True


def test_case_table_is_big_enough():
    per_engine = {e: sum(1 for c in CASES if LETTER[e] in c.engines and c.kind != "control") for e in LETTER}
    assert min(per_engine.values()) >= 40, per_engine
    assert {c.kind for c in CASES} >= {"write", "multi", "file", "extension", "config", "resource", "malformed",
                                       "huge", "unicode", "control"}


@pytest.mark.parametrize("engine_name", list(LETTER))
def test_result_size_cap_truncates(engine_name, request, safety_settings):
    """216 rows of 1,000 characters against a 50 kB cap: about 50 rows come back, flagged truncated."""
    engine = request.getfixturevalue(f"{engine_name}_engine")
    wide = "printf('%1000s', 'x')" if engine_name == "sqlite" else "repeat('x', 1000)"
    capped = safety_settings.replace(max_result_bytes=50_000)
    res = nl2sql.execute(f"SELECT {wide} AS w FROM singer a, singer b, singer c", db=engine.db, settings=capped)
    assert res.truncated is True and 40 <= len(res.df) <= 50


def test_malformed_and_huge_input_cannot_crash_the_process(duckdb_engine, sqlite_engine, tmp_path):
    """Run the malformed, huge and unicode cases in a child process: a crash in a C extension (sqlglot's
    tokenizer, DuckDB, sqlite3) would show up as a signal here instead of silently ending the test run."""
    import json
    import subprocess
    import sys
    cases = [c.sql for c in CASES if c.kind in ("malformed", "huge", "unicode")]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": cases, "dbs": [duckdb_engine.db, sqlite_engine.db]}))
    script = (
        "import json, sys, nl2sql\n"
        "from nl2sql.config import Settings\n"
        f"d = json.load(open({str(tmp_path / 'cases.json')!r}))\n"
        f"s = Settings.from_env(data_dir={str(tmp_path)!r}, statement_timeout=1.5)\n"
        "for db in d['dbs']:\n"
        "    for sql in d['cases']:\n"
        "        try:\n"
        "            nl2sql.execute(sql, db=db, settings=s)\n"
        "        except nl2sql.ValidationError:\n"
        "            pass\n"
        "    print(int(nl2sql.execute('SELECT COUNT(*) FROM singer', db=db, settings=s).df.iloc[0, 0]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["6", "6"]
