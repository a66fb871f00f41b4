"""Validation with sqlglot: one read-only query over names that exist, transpiled to the warehouse dialect.

Everything is decided on the parsed tree, never on the raw text, and it fails closed: a root that is not a
query, or any statement node anywhere in the tree, is rejected.

>>> from nl2sql.schema import Schema, Table, Column
>>> s = Schema("x", "postgres", (Table("Singer", (Column("Name", "TEXT"), Column("age", "INTEGER"))),))
>>> validate("select name from singer where name = \\"Bob\\"", s).sql
'SELECT "Name" FROM "Singer" WHERE "Name" = \\'Bob\\''
>>> validate("DROP TABLE singer", s)
Traceback (most recent call last):
...
nl2sql.errors.UnsafeSQLError: Only read-only queries may run; this SQL is a DROP statement. Ask a question that reads data, or run writes through your own tools.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from .errors import UnsafeSQLError, ValidationError
from .prompt import SQL_DIALECT
from .schema import Schema

MAX_DEPTH = 64

# Statement and clause nodes that change state or reach outside the data. Any of them anywhere in the
# tree rejects the query, even when the root is a SELECT (e.g. a DELETE inside a CTE, SELECT ... INTO).
_FORBIDDEN_NODES = tuple(getattr(exp, n) for n in (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "TruncateTable", "Command", "Into",
    "Copy", "Attach", "Detach", "Install", "LoadData", "Pragma", "Set", "Transaction", "Commit",
    "Rollback", "Use", "Grant", "Revoke", "Analyze", "Cache", "Uncache", "Refresh", "Kill", "Execute",
    "Describe", "Show", "Summarize", "Lock",
) if hasattr(exp, n))

# Functions that read files, reach the network, sleep, or touch server state, per engine family.
DENIED_FUNCTIONS = {
    # DuckDB: file/network readers, extension and settings access
    "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_json_objects", "read_ndjson",
    "read_ndjson_auto", "read_ndjson_objects", "read_parquet", "parquet_scan", "parquet_metadata",
    "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "read_text", "read_blob", "glob",
    "sniff_csv", "read_xlsx", "st_read", "iceberg_scan", "delta_scan", "sqlite_scan", "sqlite_attach",
    "postgres_scan", "postgres_attach", "mysql_scan", "query", "query_table", "duckdb_secrets",
    "duckdb_settings", "current_setting", "getenv", "load_extension", "httpfs", "read_csv_file",
    # PostgreSQL
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "lo_import", "lo_export", "lo_get", "lo_put", "lo_open", "lo_create", "lo_unlink",
    "dblink", "dblink_exec", "dblink_connect", "set_config", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_advisory_lock", "txid_current",
    "pg_logical_emit_message", "pg_create_restore_point", "pg_switch_wal", "query_to_xml",
    "query_to_xml_and_xmlschema", "table_to_xml", "cursor_to_xml", "database_to_xml",
    # MySQL / MariaDB
    "load_file", "sleep", "benchmark", "get_lock", "release_lock", "master_pos_wait",
    "source_pos_wait", "sys_exec", "sys_eval",
    # SQLite
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "randomblob", "zeroblob",
}


@dataclass(frozen=True)
class ValidatedSQL:
    sql: str               # in the warehouse's dialect, ready for the guarded executor
    tree: exp.Expression   # the parsed, checked query (model dialect)
    tables: tuple[str, ...]


def parse_one_query(sql: str, *, read: str = SQL_DIALECT, max_chars: int = 20000) -> exp.Expression:
    """Parse exactly one statement and check it is read-only. Raises ValidationError / UnsafeSQLError."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The SQL is empty.", hint="Write one SELECT statement.")
    if len(sql) > max_chars:
        raise ValidationError(f"The SQL is {len(sql):,} characters long, over the limit of {max_chars:,}.",
                              hint="Shorten it, or raise NL2SQL_MAX_SQL_CHARS.")
    if "\x00" in sql:
        raise UnsafeSQLError("The SQL contains a NUL byte.", hint="Remove control characters and try again.")
    try:
        statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
    except RecursionError:
        raise ValidationError("The SQL is nested too deeply to check.", hint="Simplify the query.") from None
    except SqlglotError as e:
        raise ValidationError(f"The SQL does not parse: {_first_line(e)}", hint="Fix the syntax and retry.") from None
    if len(statements) != 1:
        raise UnsafeSQLError(f"Exactly one statement may run; this SQL has {len(statements)}.",
                             hint="Send one SELECT at a time.")
    tree = statements[0]
    _check_read_only(tree)
    return tree


def _check_read_only(tree: exp.Expression) -> None:
    if not isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
        raise UnsafeSQLError(f"Only read-only queries may run; this SQL is a {kind} statement.",
                             hint="Ask a question that reads data, or run writes through your own tools.")
    depth = 0
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise UnsafeSQLError(f"Only read-only queries may run; this SQL contains {node.key.upper()}.",
                                 hint="Remove it and send a plain SELECT.")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in DENIED_FUNCTIONS:
                raise UnsafeSQLError(f"The function {name}() is not allowed: it reaches outside the data.",
                                     hint="Query the tables of this database only.")
        if isinstance(node, exp.Table) and isinstance(node.this, (exp.Literal, exp.Func, exp.Anonymous)):
            raise UnsafeSQLError("Only tables of this database may be read, not files or functions in FROM.",
                                 hint="Name a table of the schema.")
        if isinstance(node, (exp.Lock,)) or (isinstance(node, exp.Select) and node.args.get("locks")):
            raise UnsafeSQLError("Locking reads (FOR UPDATE/SHARE) are not allowed.", hint="Drop the locking clause.")
    for node in tree.walk():
        d = 0
        p = node
        while p is not None and d <= MAX_DEPTH:
            p, d = p.parent, d + 1
        depth = max(depth, d)
        if depth > MAX_DEPTH:
            raise ValidationError("The SQL is nested too deeply to check.", hint="Simplify the query.")


def validate(sql: str, schema: Schema, *, dialect: str | None = None, read: str = SQL_DIALECT,
             max_chars: int = 20000) -> ValidatedSQL:
    """Check one model-written query against `schema` and transpile it to `dialect` (default: the schema's)."""
    tree = parse_one_query(sql, read=read, max_chars=max_chars)
    tree = _strings_from_double_quotes(tree, schema)
    tables = _check_names(tree, schema)
    _canonicalise_names(tree, schema, dialect or schema.dialect)
    try:
        out = tree.sql(dialect=dialect or schema.dialect)
    except SqlglotError as e:
        raise ValidationError(f"The SQL cannot be written for {dialect or schema.dialect}: {_first_line(e)}",
                              hint="Rephrase the question.") from None
    return ValidatedSQL(out, tree, tables)


def _cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def _check_names(tree: exp.Expression, schema: Schema) -> tuple[str, ...]:
    ctes = _cte_names(tree)
    used = []
    for t in tree.find_all(exp.Table):
        name = t.name
        if name.lower() in ctes:
            continue
        if schema.table(name) is None:
            raise ValidationError(f"Unknown table {name!r}.", hint=_did_you_mean(name, [x.name for x in schema.tables]))
        used.append(schema.table(name).name)
    try:
        qualify(tree.copy(), schema=_lower_mapping(schema), dialect=SQL_DIALECT, validate_qualify_columns=True,
                quote_identifiers=False, identify=False)
    except OptimizeError as e:
        raise ValidationError(f"The SQL names something the schema lacks: {_first_line(e)}",
                              hint="Use only the tables and columns listed in the schema.") from None
    except (SqlglotError, RecursionError, KeyError, ValueError) as e:
        raise ValidationError(f"The SQL could not be checked against the schema: {_first_line(e)}",
                              hint="Simplify the query.") from None
    return tuple(dict.fromkeys(used))


def _lower_mapping(schema: Schema) -> dict:
    return {t.name.lower(): {c.name.lower(): (c.type or "TEXT") for c in t.columns} for t in schema.tables}


def _strings_from_double_quotes(tree: exp.Expression, schema: Schema) -> exp.Expression:
    """SQLite reads "x" as a string when no column x exists; make that explicit so other engines agree."""
    known = {c.name.lower() for t in schema.tables for c in t.columns}
    aliases = {a.alias.lower() for a in tree.find_all(exp.Alias)}
    for col in list(tree.find_all(exp.Column)):
        ident = col.this
        if (isinstance(ident, exp.Identifier) and ident.quoted and not col.table
                and ident.name.lower() not in known and ident.name.lower() not in aliases):
            col.replace(exp.Literal.string(ident.name))
    return tree


_UNQUOTED_OK = re.compile(r"^[a-z_][a-z0-9_]*$")


def _canonicalise_names(tree: exp.Expression, schema: Schema, dialect: str) -> None:
    """Spell tables and columns as the schema does, quoting where the target would otherwise fold case."""
    columns = {c.name.lower(): c.name for t in schema.tables for c in t.columns}
    tables = {t.name.lower(): t.name for t in schema.tables}
    folds = dialect in ("postgres", "snowflake", "oracle", "redshift", "trino", "presto")

    def fix(ident: exp.Identifier, names: dict) -> None:
        real = names.get(ident.name.lower())
        if real is None:
            return
        ident.set("this", real)
        plain = _UNQUOTED_OK.match(real.lower()) and (not folds or real == real.lower())
        ident.set("quoted", not plain or _is_reserved(real))

    for t in tree.find_all(exp.Table):
        if isinstance(t.this, exp.Identifier):
            fix(t.this, tables)
    for c in tree.find_all(exp.Column):
        if isinstance(c.this, exp.Identifier):
            fix(c.this, columns)


_RESERVED = {"order", "group", "select", "from", "where", "table", "user", "year", "date", "time", "timestamp",
             "limit", "by", "desc", "asc", "key", "index", "rank", "level", "name", "value", "values", "position"}


def _is_reserved(name: str) -> bool:
    return name.lower() in _RESERVED - {"name", "value", "year", "date", "time", "level", "position", "rank"}


def _did_you_mean(name: str, options: list[str]) -> str:
    import difflib
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"Did you mean {close[0]!r}?" if close else "Use a table listed in the schema."


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
