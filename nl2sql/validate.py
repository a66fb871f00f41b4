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
import unicodedata
from dataclasses import dataclass

from sqlglot import exp, transpile
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from .errors import UnsafeSQLError, ValidationError
from .prompt import SQL_DIALECT
from .schema import Schema

MAX_DEPTH = 64  # deeper trees are refused: sqlglot and the engines recurse on them

# Statement and clause nodes that change state or reach outside the data. Any of them anywhere in the
# tree rejects the query, even when the root is a SELECT (e.g. a DELETE inside a CTE, SELECT ... INTO).
# Parameter/SessionParameter: MySQL @user and @@server variables (reading server settings, or := assignment);
# Placeholder: bind parameters, which the guarded path never passes.
_FORBIDDEN_NODES = tuple(getattr(exp, n) for n in (
    "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "TruncateTable", "Command", "Into",
    "Copy", "Attach", "Detach", "Install", "LoadData", "Pragma", "Set", "Transaction", "Commit",
    "Rollback", "Use", "Grant", "Revoke", "Analyze", "Cache", "Uncache", "Refresh", "Kill", "Execute",
    "Describe", "Show", "Summarize", "Lock", "Parameter", "SessionParameter", "Placeholder", "Export",
) if hasattr(exp, n))

# Functions that read files, reach the network, sleep, run SQL from a string, or touch server state.
# One set for every engine: a name that is harmless on one engine is still refused on all (fail closed).
DENIED_FUNCTIONS = {
    # DuckDB: file/network readers, dynamic SQL, extension, settings and variable access
    "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_json_objects", "read_ndjson",
    "read_ndjson_auto", "read_ndjson_objects", "read_parquet", "parquet_scan", "parquet_metadata",
    "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "read_text", "read_blob", "glob",
    "sniff_csv", "read_xlsx", "st_read", "iceberg_scan", "delta_scan", "sqlite_scan", "sqlite_attach",
    "postgres_scan", "postgres_attach", "mysql_scan", "query", "query_table", "duckdb_secrets",
    "duckdb_settings", "current_setting", "getenv", "load_extension", "httpfs", "read_csv_file",
    "getvariable", "which_secret", "json_execute_serialized_sql", "checkpoint", "force_checkpoint",
    # PostgreSQL
    "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_sleep", "pg_sleep_for",
    "pg_sleep_until", "lo_import", "lo_export", "lo_get", "lo_put", "lo_open", "lo_create", "lo_unlink",
    "dblink", "dblink_exec", "dblink_connect", "set_config", "pg_terminate_backend",
    "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "pg_advisory_lock", "txid_current",
    "pg_logical_emit_message", "pg_create_restore_point", "pg_switch_wal", "query_to_xml",
    "query_to_xml_and_xmlschema", "table_to_xml", "cursor_to_xml", "database_to_xml", "nextval", "setval",
    "pg_notify", "loread", "lowrite",
    # MySQL / MariaDB
    "load_file", "sleep", "benchmark", "get_lock", "release_lock", "release_all_locks", "is_free_lock",
    "is_used_lock", "master_pos_wait", "master_gtid_wait", "source_pos_wait", "wait_for_executed_gtid_set",
    "sys_exec", "sys_eval",
    # SQLite
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "randomblob", "zeroblob",
}
# Whole families, by prefix: file readers, large objects, server files and admin functions, catalogs.
DENIED_PREFIXES = ("read_", "lo_", "dblink", "pg_read", "pg_ls_", "pg_stat_file", "pg_sleep", "pg_advisory",
                   "pg_try_advisory", "pg_file", "pg_logical", "pg_replication", "pg_create", "pg_drop",
                   "pg_terminate", "pg_cancel", "pg_reload", "pg_rotate", "pg_switch", "pg_promote",
                   "pg_stat_reset", "parquet_", "iceberg_", "delta_", "sqlite_", "postgres_", "mysql_", "duckdb_",
                   "pragma_")

# A table name that looks like a file, URL or glob: DuckDB reads `FROM 'data.csv'` as a file scan.
_PATH_LIKE = re.compile(r"[/\\:*?~]|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|gz|zst|xlsx?|arrow|feather|avro|db|"
                        r"duckdb|ddb|sqlite3?)$", re.IGNORECASE)


def is_denied_function(name: str) -> bool:
    """Whether a function name is on the denylist.

    >>> [is_denied_function(n) for n in ("pg_read_file", "LO_IMPORT", "read_text", "count", "upper")]
    [True, True, True, False, False]
    """
    name = name.lower()
    return name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES)


@dataclass(frozen=True)
class ValidatedSQL:
    sql: str               # in the warehouse's dialect, ready for the guarded executor
    tree: exp.Expression   # the parsed, checked query (model dialect)
    tables: tuple[str, ...]


def check_sql_text(sql, max_chars: int = 20000) -> str:
    """Input caps on the raw text, before any parsing: type, emptiness, length, hidden characters."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValidationError("The SQL is empty.", hint="Write one SELECT statement.")
    if len(sql) > max_chars:
        raise ValidationError(f"The SQL is {len(sql):,} characters long, over the limit of {max_chars:,}.",
                              hint="Shorten it, or raise NL2SQL_MAX_SQL_CHARS.")
    if "\x00" in sql:
        raise UnsafeSQLError("The SQL contains a NUL byte.", hint="Remove control characters and try again.")
    for i, ch in enumerate(sql):
        # Control, format (zero-width, bidi overrides, tags), surrogate and private-use characters make the text
        # read differently to a person, to sqlglot and to the engine: refuse them, even inside strings.
        if ch not in "\t\n\r" and (unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") or ch in "\u2028\u2029"):
            raise UnsafeSQLError(f"The SQL contains an invisible or control character (U+{ord(ch):04X}) at "
                                 f"position {i + 1}.", hint="Remove hidden characters and send plain text.")
    return sql


def parse_one_query(sql: str, *, read: str = SQL_DIALECT, max_chars: int = 20000) -> exp.Expression:
    """Parse exactly one statement and check it is read-only. Raises ValidationError / UnsafeSQLError.

    >>> parse_one_query("SELECT 1 /*!50000 , LOAD_FILE('/etc/passwd') */", read="mysql")
    Traceback (most recent call last):
    ...
    nl2sql.errors.UnsafeSQLError: The SQL contains an executable comment (/*! ... */), which MySQL and MariaDB run as code. Remove the comment.
    """
    check_sql_text(sql, max_chars)
    try:
        dialect = Dialect.get_or_raise(read)
        tokens = dialect.tokenize(sql)
        # MySQL/MariaDB execute the body of /*! ... */ and /*M! ... */; sqlglot keeps it as a comment, so what
        # we checked would differ from what runs. Refused on every engine (fail closed).
        if any(c.lstrip().startswith(("!", "M!", "m!")) for t in tokens for c in t.comments):
            raise UnsafeSQLError("The SQL contains an executable comment (/*! ... */), which MySQL and MariaDB "
                                 "run as code.", hint="Remove the comment.")
        statements = [s for s in dialect.parser().parse(tokens, sql) if s is not None]
        if len(statements) != 1:
            raise UnsafeSQLError(f"Exactly one statement may run; this SQL has {len(statements)}.",
                                 hint="Send one SELECT at a time.")
        tree = statements[0]
        _check_read_only(tree)
    except RecursionError:
        raise ValidationError("The SQL is nested too deeply to check.", hint="Simplify the query.") from None
    except SqlglotError as e:
        raise ValidationError(f"The SQL does not parse: {_first_line(e)}", hint="Fix the syntax and retry.") from None
    return tree


def _check_read_only(tree: exp.Expression) -> None:
    if not isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
        raise UnsafeSQLError(f"Only read-only queries may run; this SQL is a {kind} statement.",
                             hint="Ask a question that reads data, or run writes through your own tools.")
    _check_depth(tree)  # first: the checks below and the SQL generator recurse
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise UnsafeSQLError(f"Only read-only queries may run; this SQL contains {node.key.upper()}.",
                                 hint="Remove it and send a plain SELECT.")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if is_denied_function(name):
                raise UnsafeSQLError(f"The function {name}() is not allowed: it reaches outside the data or "
                                     "changes server state.", hint="Query the tables of this database only.")
        if isinstance(node, exp.Table):
            if isinstance(node.this, (exp.Literal, exp.Func, exp.Anonymous)):
                raise UnsafeSQLError("Only tables of this database may be read, not files or functions in FROM.",
                                     hint="Name a table of the schema.")
            if _PATH_LIKE.search(node.name or ""):
                raise UnsafeSQLError(f"The table name {node.name[:80]!r} looks like a file, URL or pattern; only "
                                     "tables of this database may be read.", hint="Name a table of the schema.")
        if isinstance(node, (exp.Lock,)) or (isinstance(node, exp.Select) and node.args.get("locks")):
            raise UnsafeSQLError("Locking reads (FOR UPDATE/SHARE) are not allowed.", hint="Drop the locking clause.")


def _check_depth(tree: exp.Expression) -> None:
    """Refuse trees nested deeper than MAX_DEPTH, without recursion (walk() is iterative)."""
    depth = {id(tree): 0}
    for node in tree.walk(bfs=True):
        d = depth[id(node)]
        if d > MAX_DEPTH:
            raise ValidationError(f"The SQL is nested too deeply to check (more than {MAX_DEPTH} levels).",
                                  hint="Simplify the query.")
        for child in node.iter_expressions():
            depth[id(child)] = d + 1


def to_model_dialect(sql: str, dialect: str | None) -> str:
    """SQL from a warehouse's dialect into the one the model writes (for prompts and training); unchanged if it
    is already that dialect or sqlglot cannot carry it over.

    >>> to_model_dialect('SELECT "month" FROM t', "duckdb")
    'SELECT "month" FROM t'
    """
    if not dialect or dialect == SQL_DIALECT:
        return sql
    try:
        return transpile(sql, read=dialect, write=SQL_DIALECT)[0]
    except SqlglotError:
        return sql


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
