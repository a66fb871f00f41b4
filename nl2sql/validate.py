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

import os
import re
import unicodedata
from dataclasses import dataclass

from sqlglot import exp, transpile
from sqlglot.dialects.dialect import Dialect
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from .errors import UnsafeSQLError, ValidationError
from .prompt import SQL_DIALECT
from .schema import Schema

class MariaDB(MySQL):
    """MySQL as sqlglot writes it, except where MariaDB lacks the function (10.11 has no REGEXP_LIKE).
    Defining the class registers the sqlglot dialect name "mariadb"."""

    class Generator(MySQL.Generator):
        TRANSFORMS = {**MySQL.Generator.TRANSFORMS,
                      exp.RegexpLike: lambda self, e: (self.binary(e, "REGEXP") if not e.args.get("flag")
                                                       else self.function_fallback_sql(e))}


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

# --- functions: an allowlist per dialect, fail closed -----------------------------------------------
# A denylist always misses the next name (case-mapped Unicode spellings, the next admin function), so only the
# functions an analyst needs may run. Functions sqlglot knows are checked by their expression class (the
# generator writes their names itself, in ASCII); functions it does not know (exp.Anonymous) by their name as
# written in the text that runs, which must be a plain ASCII identifier. Both are compared after NFKC +
# casefold. NL2SQL_EXTRA_FUNCTIONS extends the list (the administrator's choice and risk).
ALLOWED_FUNCTION_CLASSES = frozenset({
    # logic, conditionals, casts
    "and", "or", "xor", "case", "if", "coalesce", "nullif", "greatest", "least", "nvl2", "exists", "cast",
    "trycast", "casttostrtype", "collate", "extract", "equalnull",
    # aggregates
    "count", "sum", "avg", "min", "max", "groupconcat", "arrayagg", "stddev", "stddevpop", "stddevsamp",
    "variance", "variancepop", "median", "quantile", "approxquantile", "percentilecont", "percentiledisc",
    "anyvalue", "first", "last", "countif", "corr", "covarpop", "covarsamp", "argmax", "argmin",
    "approxdistinct", "logicaland", "logicalor", "booland", "boolor", "bitwiseandagg", "bitwiseoragg",
    "bitwisexoragg", "mode", "grouping", "skewness", "kurtosis",
    # window functions
    "rownumber", "rank", "denserank", "percentrank", "cumedist", "ntile", "lag", "lead", "firstvalue",
    "lastvalue", "nthvalue",
    # strings (repeat, pad, space and format have their size arguments capped below)
    "length", "bytelength", "bitlength", "lower", "upper", "substring", "trim", "replace", "strposition", "concat",
    "concatws", "left", "right", "reverse", "initcap", "splitpart", "startswith", "endswith", "contains", "ascii",
    "chr", "unicode", "hex", "lowerhex", "md5", "levenshtein", "translate", "overlay", "repeat", "pad", "space",
    "format", "regexplike", "regexpilike", "regexpextract", "regexpreplace", "regexpcount", "regexpinstr",
    "regexpsubstr", "numbertostr", "tochar", "tonumber", "typeof",
    # numbers
    "abs", "round", "floor", "ceil", "sqrt", "cbrt", "pow", "exp", "ln", "log", "sign", "pi", "rand", "degrees",
    "radians", "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "cot", "trunc", "isnan", "isinf",
    # dates and times
    "date", "time", "datetime", "timestamp", "currentdate", "currenttime", "currenttimestamp", "currentdatetime",
    "localtime", "localtimestamp", "dateadd", "datesub", "datediff", "datetrunc", "timestamptrunc", "timetrunc",
    "datetimeadd", "datetimesub", "datetimediff", "datetimetrunc", "timestampadd", "timestampsub",
    "timestampdiff", "timeadd", "timesub", "timediff", "tsordsadd", "tsordsdiff", "tsordstodate", "tsordstotime",
    "tsordstotimestamp", "strtodate", "strtotime", "strtounix", "timetostr", "timetounix", "timestrtodate",
    "timestrtotime", "timestrtounix", "unixtotime", "unixtostr", "unixtotimestr", "datestrtodate",
    "datetodatestr", "timetotimestr", "dayofweek", "dayofweekiso", "dayofmonth", "dayofyear", "weekofyear",
    "week", "year", "month", "day", "hour", "minute", "second", "quarter", "lastday", "dayname", "monthname",
    "monthsbetween", "datefromparts", "makeinterval", "addmonths",
    # generated rows (sizes capped below) and unnesting them
    "generateseries", "explodinggenerateseries", "explode", "unnest",
})

# Functions sqlglot does not type, by dialect: plain analyst functions of that engine.
_COMMON_NAMES = {"now", "total", "char_length", "character_length", "octet_length", "lcase", "ucase", "mod",
                 "log10", "log2", "power", "ceiling", "truncate", "position", "strpos", "btrim", "string_agg",
                 "stddev_pop", "stddev_samp", "var_pop", "var_samp", "bool_and", "bool_or", "every",
                 "date_part", "datepart", "to_date", "to_timestamp", "make_date", "make_time", "make_timestamp",
                 "initcap", "ltrim", "rtrim", "left", "right", "split_part", "date_diff", "date_add", "date_sub",
                 # what the grammar (nl2sql/grammar.py) lets the model write, passed through by sqlglot as is:
                 # allowed everywhere (an engine without the function answers with its own error)
                 "julianday", "printf", "iif", "strftime", "instr", "substr", "ifnull", "datetime", "time", "date",
                 "random", "typeof"}
ALLOWED_FUNCTION_NAMES = {
    "sqlite": frozenset(_COMMON_NAMES | {
        "julianday", "unixepoch", "printf", "format", "likely", "unlikely", "likelihood", "quote", "instr",
        "substr", "ifnull", "iif", "strftime", "datetime", "time", "date", "char", "glob", "like", "sign",
        "concat_ws",
        # the same names as SQLite resolves them at run time (its authorizer asks by name, typed or not)
        "count", "sum", "avg", "min", "max", "group_concat", "abs", "round", "length", "lower", "upper",
        "substring", "trim", "replace", "coalesce", "nullif", "random", "typeof", "unicode", "hex", "ceil",
        "floor", "sqrt", "pow", "exp", "ln", "log", "pi", "sin", "cos", "tan", "asin", "acos", "atan", "atan2",
        "degrees", "radians", "trunc", "concat", "timediff", "current_date", "current_time", "current_timestamp",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead", "first_value",
        "last_value", "nth_value", "unhex", "octet_length"}),
    "duckdb": frozenset(_COMMON_NAMES | {
        "julianday", "printf", "strftime", "strptime", "epoch", "epoch_ms", "dayname", "monthname", "yearweek",
        "isodow", "isoyear", "weekday", "weekofyear", "era", "century", "decade", "millennium", "list_sort",
        "list_reverse_sort", "list_distinct", "list_unique", "list_contains", "list_has", "len", "array_length",
        "list_aggregate", "list_min", "list_max", "list_sum", "list_avg", "nfc_normalize", "strip_accents",
        "prefix", "suffix", "ilike_escape", "like_escape", "regexp_matches", "regexp_full_match", "age",
        "to_days", "to_months", "to_years", "to_hours", "to_minutes", "to_seconds", "last_day", "fsum",
        "favg", "product", "histogram", "entropy", "mad", "arbitrary", "geomean", "geometric_mean", "bit_count",
        "ifnull", "nullif", "instr", "substr", "gcd", "lcm", "even", "factorial_", "date_trunc", "datetrunc",
        "time_bucket", "make_timestamptz", "current_localtimestamp", "today",
        "arg_max_null", "arg_min_null"}),  # what aggregate_bare_columns writes
    "postgres": frozenset(_COMMON_NAMES | {
        "age", "date_trunc", "justify_days", "justify_hours", "justify_interval", "to_char", "to_number",
        "clock_timestamp", "statement_timestamp", "transaction_timestamp", "isfinite", "date_bin", "width_bucket",
        "div", "gcd", "lcm", "trim_scale", "scale", "min_scale", "regexp_match", "regexp_matches", "regexp_like",
        "regexp_replace", "regexp_split_to_array", "regexp_count", "regexp_instr", "regexp_substr", "starts_with",
        "unistr", "quote_ident", "quote_literal", "quote_nullable", "to_hex", "array_length", "cardinality",
        "array_position", "array_positions", "array_to_string", "string_to_array", "unnest", "json_build_object",
        "jsonb_build_object", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "jsonb_extract_path",
        "jsonb_extract_path_text", "json_extract_path", "json_extract_path_text", "jsonb_typeof", "json_typeof",
        "pg_typeof", "num_nonnulls", "num_nulls", "mode", "regr_slope", "regr_intercept", "regr_r2",
        "regr_count", "regr_avgx", "regr_avgy", "regr_sxx", "regr_syy", "regr_sxy", "bit_and", "bit_or",
        "bit_xor", "extract", "localtime", "localtimestamp"}),
    "mysql": frozenset(_COMMON_NAMES | {
        "ifnull", "locate", "instr", "substr", "substring_index", "mid", "field", "elt", "find_in_set", "lpad",
        "rpad", "ord", "char", "bin", "oct", "conv", "format", "date_format", "str_to_date", "curdate", "curtime",
        "current_time", "sysdate", "utc_date", "utc_time", "utc_timestamp", "dayofweek", "dayofmonth",
        "dayofyear", "weekday", "weekofyear", "yearweek", "week", "makedate", "maketime", "period_add",
        "period_diff", "to_days", "from_days", "to_seconds", "sec_to_time", "time_to_sec", "time_format",
        "timestampdiff", "timestampadd", "adddate", "subdate", "addtime", "subtime", "datediff", "timediff",
        "last_day", "unix_timestamp", "from_unixtime", "convert_tz", "microsecond", "std", "bit_and", "bit_or",
        "bit_xor", "truncate", "rand", "crc32", "regexp_substr", "regexp_instr", "regexp_replace", "json_extract",
        "json_unquote", "json_length", "json_keys", "json_contains", "json_value", "json_arrayagg",
        "json_objectagg", "json_object", "json_array"}),
}

# Functions whose arguments size their output or the rows they make: where constant, the size is capped by
# NL2SQL_MAX_FUNCTION_SIZE; where not, refused (one such call cannot be interrupted once it runs).
DEFAULT_MAX_FUNCTION_SIZE = 100_000
_FORMAT_FUNCTIONS = {"printf", "format"}
_SERIES_FUNCTIONS = {"generateseries", "explodinggenerateseries", "range", "generate_series"}


class FunctionPolicy:
    """What the function check allows on one dialect: the allowlist, the administrator's extra names, the size cap."""

    def __init__(self, dialect: str | None, extra=(), max_size: int = DEFAULT_MAX_FUNCTION_SIZE):
        self.dialect = dialect or SQL_DIALECT
        self.names = ALLOWED_FUNCTION_NAMES.get(self.dialect, frozenset(_COMMON_NAMES))
        self.extra = frozenset(fold(n) for n in (extra.split(",") if isinstance(extra, str) else extra) if n.strip())
        self.max_size = int(max_size)

    @classmethod
    def from_settings(cls, dialect: str | None, settings=None) -> "FunctionPolicy":
        if settings is None:  # validate() without settings: the environment's extension of the list
            return cls(dialect, os.environ.get("NL2SQL_EXTRA_FUNCTIONS", ""),
                       int(os.environ.get("NL2SQL_MAX_FUNCTION_SIZE") or DEFAULT_MAX_FUNCTION_SIZE))
        return cls(dialect, getattr(settings, "extra_functions", ""),
                   getattr(settings, "max_function_size", DEFAULT_MAX_FUNCTION_SIZE))

    def allows_name(self, name: str) -> bool:
        """A function name as an engine calls it (SQLite's authorizer asks by name)."""
        key = fold(name)
        return bool(_ASCII_NAME.match(name)) and (key in self.names or key in self.extra)


def fold(name: str) -> str:
    """NFKC + casefold: the comparison form of a name.

    >>> fold("ＳＬＥＥＰ"), fold("ſleep"), fold("Upper")
    ('sleep', 'sleep', 'upper')
    """
    return unicodedata.normalize("NFKC", name).strip().casefold()


_ASCII_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALLED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(|$)")


def check_functions(tree: exp.Expression, policy: FunctionPolicy) -> None:
    """Refuse any function outside the allowlist, and size arguments over the cap (see ALLOWED_FUNCTION_CLASSES)."""
    for node in tree.walk():
        if not isinstance(node, exp.Func):
            continue
        if isinstance(node, (exp.Anonymous, exp.AnonymousAggFunc)):
            shown = node.name
            key = fold(shown)
            ok = bool(_ASCII_NAME.match(shown)) and (key in policy.names or key in policy.extra)
        else:
            shown = node.sql_name().lower()
            key = node.key
            ok = key in ALLOWED_FUNCTION_CLASSES
            if not ok:  # name it as the text that runs spells it (CurrentVersion -> VERSION() on DuckDB)
                written = _CALLED.match(node.sql(dialect=policy.dialect, comments=False))
                shown = written.group(1).lower() if written else shown
                ok = bool(({fold(n) for n in node.sql_names()} | {fold(shown)}) & policy.extra)
        if isinstance(node.parent, exp.Dot) and node.arg_key == "expression":
            ok = False  # schema-qualified (pg_catalog.x) or method-style calls: no name resolution surprises
        if not ok:
            raise UnsafeSQLError(
                f"The function {shown[:60]}() is not allowed: only functions an analyst needs (aggregates, window, "
                f"string, number, date and conditional functions) run here.",
                hint="Rewrite the query without it, or ask the administrator to add it to NL2SQL_EXTRA_FUNCTIONS "
                     "(each addition is a risk they take).")
        _check_size_arguments(node, key, shown, policy)


def _constant(node) -> float | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return float(node.this)
        except ValueError:
            return None
    if isinstance(node, exp.Neg):
        v = _constant(node.this)
        return None if v is None else -v
    if isinstance(node, exp.Paren):
        return _constant(node.this)
    return None


def _max_length(node) -> int | None:
    """The most characters a string expression can have when that follows from the SQL alone (literals and
    the sized builders around them), else None (a column: its size is the data's)."""
    if isinstance(node, exp.Literal):
        return len(node.this) if node.is_string else 24
    if isinstance(node, exp.Paren):
        return _max_length(node.this)
    args = node.expressions if isinstance(node, exp.Anonymous) else []
    key = fold(node.name) if isinstance(node, exp.Anonymous) else node.key
    if key == "repeat":
        inner = _max_length(node.this if not args else args[0])
        times = _constant(node.args.get("times") if not args else (args[1] if len(args) > 1 else None))
        return None if inner is None or times is None else int(inner * max(times, 0))
    if key in ("pad", "lpad", "rpad", "space"):
        size = _constant((node.args.get("expression") if key == "pad" else node.this) if not args
                         else (args[1] if key != "space" and len(args) > 1 else args[0] if args else None))
        return None if size is None else int(max(size, 0))
    if isinstance(node, (exp.Concat, exp.DPipe)) or key in ("concat", "concat_ws"):
        parts = [_max_length(p) for p in (node.expressions or [node.this, node.expression] if not args else args)
                 if p is not None]
        return None if any(p is None for p in parts) else sum(parts)
    return None


def _size_error(shown: str, what: str, cap: int) -> UnsafeSQLError:
    return UnsafeSQLError(f"The {what} of {shown}() must be a constant number, and what it makes at most {cap:,} "
                          "long, here: one call that builds a huge value cannot be stopped once it runs.",
                          hint="Use a smaller constant, or ask the administrator to raise NL2SQL_MAX_FUNCTION_SIZE.")


def _check_size_arguments(node: exp.Func, key: str, shown: str, policy: FunctionPolicy) -> None:
    cap = policy.max_size

    def capped(arg, what, scale: float = 1.0):
        v = _constant(arg)
        if v is None or v * scale > cap:
            raise _size_error(shown, what, cap)

    args = node.expressions if isinstance(node, exp.Anonymous) else []
    if key == "repeat":
        times = node.args.get("times") if not args else (args[1] if len(args) > 1 else None)
        text = node.this if not args else args[0]
        capped(times, "count", max(1, _max_length(text) or 1))  # nested builders multiply
    elif key == "pad" or key in ("lpad", "rpad"):
        capped(node.args.get("expression") if not args else (args[1] if len(args) > 1 else None), "length")
    elif key == "space":
        capped(node.this if not args else args[0], "length")
    elif key in _SERIES_FUNCTIONS:
        parts = ([node.args.get("start"), node.args.get("end"), node.args.get("step")] if not args else
                 list(args) + [None] * (3 - len(args)))
        if any(p is not None and _constant(p) is None for p in parts):
            raise _size_error(shown, "bounds", cap)
        lo, hi, step = (_constant(p) if p is not None else None for p in parts[:3])
        if hi is None:  # range(n)
            lo, hi = 0.0, lo or 0.0
        step = step or 1.0
        if (hi - lo) / step + 1 > cap:
            raise _size_error(shown, "number of values", cap)
    elif key in _FORMAT_FUNCTIONS and not (policy.dialect == "mysql" and key == "format"):  # MySQL: FORMAT(n, decimals)
        fmt = node.this if not args else args[0]
        if not (isinstance(fmt, exp.Literal) and fmt.is_string):
            raise UnsafeSQLError(f"The format of {shown}() must be a constant string here.",
                                 hint="Write the format as a literal, e.g. printf('%.2f', x).")
        for m in _FORMAT_WIDTHS.finditer(fmt.this):
            for n in m.groups():
                if n == "*" or (n and int(n) > cap):
                    raise _size_error(shown, "field width", cap)


# printf/format field widths and precisions (%10s, %.*c, %1$5s) and fmt-style ones ({:>10}, {:.3})
_FORMAT_WIDTHS = re.compile(r"%(?:\d+\$)?[-+ #0']*(\d+|\*)?(?:\.(\d+|\*))?|\{[^}]*?:[^}\d*]*(\d+|\*)?(?:\.(\d+|\*))?")


# A table name that looks like a file, URL or glob: DuckDB reads `FROM 'data.csv'` as a file scan.
_PATH_LIKE = re.compile(r"[/\\:*?~]|\.(csv|tsv|txt|json|jsonl|ndjson|parquet|gz|zst|xlsx?|arrow|feather|avro|db|"
                        r"duckdb|ddb|sqlite3?)$", re.IGNORECASE)


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


def parse_one_query(sql: str, *, read: str = SQL_DIALECT, max_chars: int = 20000,
                    functions: "FunctionPolicy | None" = None) -> exp.Expression:
    """Parse exactly one statement and check it is read-only and calls only allowed functions.
    Raises ValidationError / UnsafeSQLError.

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
        if read == "mysql":
            _drop_from_dual(tree)
        check_functions(tree, functions or FunctionPolicy.from_settings(read))
    except RecursionError:
        raise ValidationError("The SQL is nested too deeply to check.", hint="Simplify the query.") from None
    except SqlglotError as e:
        raise ValidationError(f"The SQL does not parse: {_first_line(e)}", hint="Fix the syntax and retry.") from None
    return tree


def _drop_from_dual(tree: exp.Expression) -> None:
    """MySQL's `FROM DUAL` means no table; written back out it would become a quoted table name `dual`."""
    for select in list(tree.find_all(exp.Select)):
        source = select.args.get("from_") or select.args.get("from")
        table = source.this if source is not None else None
        if (isinstance(table, exp.Table) and isinstance(table.this, exp.Identifier) and not table.this.quoted
                and table.name.lower() == "dual" and not table.db and not table.alias and not select.args.get("joins")):
            source.pop()


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
             max_chars: int = 20000, settings=None) -> ValidatedSQL:
    """Check one model-written query against `schema` and transpile it to `dialect` (default: the schema's).

    `settings` supplies NL2SQL_EXTRA_FUNCTIONS and NL2SQL_MAX_FUNCTION_SIZE; without it they come from the
    environment (the guarded executor, which uses its settings, checks the same again before running)."""
    tree = parse_one_query(sql, read=read, max_chars=max_chars, functions=FunctionPolicy.from_settings(read, settings))
    tree = _strings_from_double_quotes(tree, schema)
    tables = _check_names(tree, schema)
    target = dialect or schema.dialect
    _canonicalise_names(tree, schema, target)
    runs = tree
    if read == "sqlite" and target in ("duckdb", "postgres"):
        runs = tree.copy()
        aggregate_bare_columns(runs, target, schema)
    try:
        out = runs.sql(dialect=target)
    except SqlglotError as e:
        raise ValidationError(f"The SQL cannot be written for {target}: {_first_line(e)}",
                              hint="Rephrase the question.") from None
    # Transpiling may rename or retype functions: the output, as it will run, is checked again.
    check_text_that_runs(out, target, FunctionPolicy.from_settings(target, settings))
    return ValidatedSQL(out, tree, tables)


# --- SQLite's bare columns in grouped queries, for engines that refuse them -------------------------------
# SQLite lets a grouped query (GROUP BY, or an aggregate) select, order or filter by a column that it neither
# groups by nor aggregates: the value comes from one row of the group; when the query has exactly one min() or
# max() aggregate, from the row holding that minimum or maximum. DuckDB and PostgreSQL refuse such a column
# ("must appear in the GROUP BY clause"), so it is wrapped in an aggregate that gives SQLite's value.

# Aggregates sqlglot does not type (exp.Anonymous), by name: SQLite's total() and the engines' own.
_ANONYMOUS_AGGREGATES = {"total", "string_agg", "bool_and", "bool_or", "every", "stddev_pop", "stddev_samp",
                         "var_pop", "var_samp", "arg_max_null", "arg_min_null"}
# PostgreSQL types that min() orders (before 16 there is no any_value(); min(boolean) or min(json) do not exist)
_PG_MIN_TYPES = re.compile(r"INT|CHAR|TEXT|NUM|DEC|REAL|FLOAT|DOUBLE|DATE|TIME|INTERVAL|MONEY|SERIAL|CLOB",
                           re.IGNORECASE)
_SCOPES = (exp.Select, exp.Subquery, exp.SetOperation)


def _is_aggregate(node: exp.Expression) -> bool:
    if isinstance(node.parent, exp.Window) and node.arg_key == "this":
        return False  # sum(x) OVER (...) is a window function, not an aggregate of the group
    if isinstance(node, exp.AggFunc):
        return True
    return isinstance(node, exp.Anonymous) and fold(node.name) in _ANONYMOUS_AGGREGATES


def _scope_walk(root: exp.Expression, stop) -> list[exp.Expression]:
    """Nodes under `root` in this query's scope (not inside subqueries); `stop(node)` true: the node is
    listed but not entered."""
    out, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is not root and isinstance(node, _SCOPES):
            continue
        out.append(node)
        if not stop(node):
            stack.extend(reversed(list(node.iter_expressions())))
    return out


def aggregate_bare_columns(tree: exp.Expression, dialect: str, schema: Schema) -> None:
    """Wrap SQLite-style bare columns of every grouped SELECT in `tree` (in place) for `dialect`:
    ANY_VALUE(c) on DuckDB and MIN(c) on PostgreSQL (any_value() is PostgreSQL 16+); with exactly one
    min(x)/max(x) aggregate, the value on that row: ARG_MIN_NULL/ARG_MAX_NULL(c, x) on DuckDB,
    (ARRAY_AGG(c ORDER BY x [DESC] NULLS LAST))[1] on PostgreSQL.

    >>> from sqlglot import parse_one
    >>> from nl2sql.schema import Schema, Table, Column
    >>> s = Schema("x", "duckdb", (Table("t", (Column("a", "TEXT"), Column("b", "INTEGER"), Column("c", "TEXT"))),))
    >>> q = parse_one("SELECT a, c, count(*) FROM t GROUP BY a ORDER BY c", read="sqlite")
    >>> aggregate_bare_columns(q, "duckdb", s); q.sql("duckdb")
    'SELECT a, ANY_VALUE(c) AS c, COUNT(*) FROM t GROUP BY a ORDER BY ANY_VALUE(c) NULLS FIRST'
    >>> q = parse_one("SELECT c, max(b) FROM t", read="sqlite")
    >>> aggregate_bare_columns(q, "postgres", s); q.sql("postgres")
    'SELECT (ARRAY_AGG(c ORDER BY b DESC NULLS LAST))[1] AS c, MAX(b) FROM t'
    """
    types: dict[str, set] = {}
    for t in schema.tables:
        for c in t.columns:
            types.setdefault(c.name.lower(), set()).add(c.type or "")
    for select in list(tree.find_all(exp.Select)):
        _aggregate_bare_columns_of(select, dialect, types)


def _aggregate_bare_columns_of(select: exp.Select, dialect: str, types: dict) -> None:
    items = list(select.expressions)
    if any(isinstance(i, exp.Star) or (isinstance(i, exp.Column) and isinstance(i.this, exp.Star)) for i in items):
        return  # SELECT * of a grouped query: SQLite's own business
    group = select.args.get("group")
    having = select.args.get("having")
    order = select.args.get("order")
    roots = [i.this if isinstance(i, exp.Alias) else i for i in items]
    late = ([having.this] if having else []) + ([o.this for o in order.expressions] if order else [])
    aggregates = [n for r in roots + late for n in _scope_walk(r, _is_aggregate) if _is_aggregate(n)]
    if not group and not aggregates:
        return
    aliases = {i.alias.lower() for i in items if isinstance(i, exp.Alias)}
    key_sql, key_cols, key_names = set(), set(), set()
    for g in (group.expressions if group else ()):
        if isinstance(g, exp.Literal) and not g.is_string and g.this.isdigit() and 0 < int(g.this) <= len(roots):
            g = roots[int(g.this) - 1]  # GROUP BY 2
        elif isinstance(g, exp.Column) and not g.table and g.name.lower() in aliases:
            g = next(i.this for i in items if isinstance(i, exp.Alias) and i.alias.lower() == g.name.lower())
        key_sql.add(g.sql().lower())
        if isinstance(g, exp.Column):
            key_cols.add((g.table.lower(), g.name.lower()))
            key_names.add(g.name.lower())
    sources = {s.alias_or_name.lower() for s in select.find_all(exp.Table, exp.Subquery)
               if s.parent_select is select}

    def grouped(node) -> bool:
        if _is_aggregate(node) or (key_sql and node.sql().lower() in key_sql):
            return True
        if isinstance(node, exp.Column):
            name = node.name.lower()
            return ((node.table.lower(), name) in key_cols or ("", name) in key_cols
                    or (not node.table and name in key_names))
        return False

    bare = []
    for root, alias_ok in [(r, False) for r in roots] + [(r, True) for r in late]:
        for node in _scope_walk(root, grouped):
            if not isinstance(node, exp.Column) or grouped(node) or isinstance(node.this, exp.Star):
                continue
            if alias_ok and not node.table and node.name.lower() in aliases:
                continue  # ORDER BY / HAVING naming a result column
            if node.table and node.table.lower() not in sources:
                continue  # a column of an outer query (correlated subquery): one value per group already
            bare.append(node)
    if not bare:
        return
    extremes = {a.sql().lower(): a for a in aggregates if isinstance(a, (exp.Min, exp.Max)) and not a.expressions}
    only = next(iter(extremes.values())) if len(extremes) == 1 else None
    for col in bare:
        wrapped = _value_of_group(col.copy(), only, dialect, types)
        if col.parent is select and col.arg_key == "expressions":  # keep the result column's name
            wrapped = exp.alias_(wrapped, exp.to_identifier(col.name, quoted=col.this.quoted))
        col.replace(wrapped)


def _value_of_group(col: exp.Column, extreme, dialect: str, types: dict) -> exp.Expression:
    """The aggregate that gives SQLite's value of a bare column (see aggregate_bare_columns)."""
    if extreme is not None:
        by = extreme.this.expressions[0] if isinstance(extreme.this, exp.Distinct) else extreme.this  # max(DISTINCT x)
        is_max = isinstance(extreme, exp.Max)
        if dialect == "duckdb":
            return exp.Anonymous(this="ARG_MAX_NULL" if is_max else "ARG_MIN_NULL", expressions=[col, by.copy()])
        ordered = exp.Ordered(this=by.copy(), desc=is_max, nulls_first=False)
        return _first_of(exp.ArrayAgg(this=exp.Order(this=col, expressions=[ordered])))
    if dialect == "duckdb":
        return exp.AnyValue(this=col)
    if all(_PG_MIN_TYPES.search(t or "") for t in types.get(col.name.lower(), {""})):
        return exp.Min(this=col)
    return _first_of(exp.ArrayAgg(this=col))  # booleans, json, uuid, ...: any element is SQLite's any row


def _first_of(array: exp.Expression) -> exp.Expression:
    return exp.Bracket(this=exp.Paren(this=array), expressions=[exp.Literal.number(0)])  # [1] as written


def check_text_that_runs(sql: str, dialect: str, functions: FunctionPolicy, tables: "TablePolicy | None" = None,
                         *, max_chars: int = 1_000_000) -> exp.Expression:
    """Parse the exact text the engine will get, in the engine's dialect, and check it again: one read-only
    statement, allowlisted functions (their names as written there), and, with `tables`, allowlisted tables."""
    tree = parse_one_query(sql, read=dialect, max_chars=max_chars, functions=functions)
    _check_niladic_functions(tree, dialect)
    if tables is not None:
        check_tables(tree, tables)
    return tree


# SQL-standard functions called without parentheses, which sqlglot may read as column names; PostgreSQL
# also reads a bare `user` as current_user. They tell who and where the session is, which no analyst query needs.
_NILADIC = {"current_user", "session_user", "current_role", "system_user", "current_catalog", "current_schema"}


def _check_niladic_functions(tree: exp.Expression, dialect: str) -> None:
    names = _NILADIC | ({"user"} if dialect == "postgres" else set())
    for col in tree.find_all(exp.Column):
        ident = col.this
        if (isinstance(ident, exp.Identifier) and not ident.quoted and not col.table
                and fold(ident.name) in names):
            raise UnsafeSQLError(f"{ident.name} names the session's login or schema here, not a column.",
                                 hint='Quote it ("user") if you mean a column of that name.')


# --- tables: the connected schema, CTEs, and what the administrator adds ---------------------------------

@dataclass(frozen=True)
class TablePolicy:
    """Tables a query may read: the introspected tables and views of the connected schema (folded names), that
    schema's own name as a qualifier, and NL2SQL_EXTRA_TABLES entries (`table`, `schema.table`, `schema.*`)."""
    names: frozenset
    schemas: frozenset = frozenset()
    extra: frozenset = frozenset()

    @classmethod
    def build(cls, names, schemas=(), extra: str = "") -> "TablePolicy":
        pairs = set()
        for item in (extra or "").split(","):
            if item.strip():
                schema, _, table = fold(item).rpartition(".")
                pairs.add((schema, table))
        return cls(frozenset(fold(n) for n in names), frozenset(fold(s) for s in schemas if s), frozenset(pairs))

    def allows(self, schema: str, table: str) -> bool:
        schema, table = fold(schema), fold(table)
        if (schema, table) in self.extra or (schema and (schema, "*") in self.extra):
            return True
        return table in self.names and (not schema or schema in self.schemas)


def check_tables(tree: exp.Expression, policy: TablePolicy) -> None:
    """Every table read must be a CTE in scope or allowed by `policy`; system catalogs and other schemas are not."""
    for t in tree.find_all(exp.Table):
        if not isinstance(t.this, exp.Identifier):
            raise UnsafeSQLError("Only tables of this database may be read.", hint="Name a table of the schema.")
        if not t.args.get("db") and not t.args.get("catalog") and fold(t.name) in _visible_ctes(t):
            continue
        if t.args.get("catalog") or not policy.allows(t.db or "", t.name):
            shown = ".".join(p for p in (t.catalog, t.db, t.name) if p)[:120]
            raise UnsafeSQLError(
                f"The table {shown!r} is not one of the tables of this database's schema; system catalogs and "
                "other schemas are not readable here.",
                hint="Use a table listed in the schema, or ask the administrator to add it to NL2SQL_EXTRA_TABLES.")


def _visible_ctes(node: exp.Expression) -> set[str]:
    """Names of the CTEs in scope at `node`: a CTE body sees the CTEs before it (all of them with RECURSIVE);
    a query body sees all of its WITH list; a name outside that scope is a real table."""
    names: set[str] = set()
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            ctes = list(parent.expressions)
            idx = next((i for i, c in enumerate(ctes) if c is child), None)
            visible = ctes if idx is None or parent.args.get("recursive") else ctes[:idx]
            names |= {fold(c.alias_or_name) for c in visible}
        else:
            w = parent.args.get("with_") or parent.args.get("with")
            if isinstance(w, exp.With) and w is not child:
                names |= {fold(c.alias_or_name) for c in w.expressions}
        child, parent = parent, parent.parent
    return names


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
