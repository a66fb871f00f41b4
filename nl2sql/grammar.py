"""A context-free grammar (Lark syntax, as llguidance reads it) for the SQL the model may write.

It is specialised per schema: table and column positions accept only the schema's names (bare when the
name is plain, double-quoted, backticked or bracketed otherwise), so constrained decoding cannot invent a
table. Which column may follow which table or alias is a matter of scope, which a context-free grammar cannot
express (SELECT comes before FROM); nl2sql/binding.py checks that during decoding.

Shaped for llguidance's Earley parser, whose work per token grows with the number of parse items:
  - each class of names is ONE lexeme (a regex alternation), not one grammar alternative per name, and a
    qualified column (`T1.name`) is one lexeme too, so a 300-table schema costs the parser what a 3-table one does;
  - expressions are flat (operand, operator, operand, ...): precedence does not matter for what is accepted,
    and every level of a precedence ladder would multiply the items at each nesting;
  - no single-character lexemes (they complete on almost every token, and each completion is parser work);
  - no lexeme has a space after a part that is itself a lexeme allowed at the same point ("LEFT OUTER",
    "IS NOT", "T1 .name"): llguidance lexes greedily without backtracking, so "LEFT JOIN" would die at the J.
It covers what analysts ask and Spider's gold queries: joins, aggregates, GROUP BY/HAVING, ORDER BY/LIMIT,
nested subqueries, UNION/INTERSECT/EXCEPT, CASE, LIKE/IN/BETWEEN, IS NULL, arithmetic, CAST and date functions.
Every SELECT reads FROM a table: a query that names no table is no answer to a question about data.

>>> from nl2sql.schema import Schema, Table, Column
>>> g = sql_grammar(Schema("x", "sqlite", (Table("singer", (Column("name"), Column("Home Town"))),)))
>>> parses(g, 'SELECT T1."Home Town" FROM singer AS T1 WHERE name LIKE \\'%a%\\'')
True
>>> parses(g, "SELECT salary FROM singer")
False
>>> parses(g, "SELECT COUNT(*)")
False
"""
from __future__ import annotations

import functools

from .prompt import is_plain_name
from .schema import Schema

AGGREGATES = ("count", "sum", "avg", "min", "max", "total", "group_concat")
FUNCTIONS = (
    "abs", "round", "length", "lower", "upper", "substr", "substring", "trim", "ltrim", "rtrim", "replace",
    "instr", "coalesce", "ifnull", "nullif", "iif", "strftime", "date", "time", "datetime", "julianday",
    "cast", "printf", "random", "typeof", "min", "max", "floor", "ceil", "ceiling", "sqrt", "power",
    "concat", "extract", "date_trunc", "year", "month", "day", "now", "current_date",
)
# Source aliases: T1..T99 as Spider and most analysts write them, or a short word (a, t, ord). The same
# spellings qualify columns (`T1.name`), together with the table names themselves.
SOURCE_ALIAS = r"[A-Za-z][A-Za-z0-9_]{0,2}"

_BASE = r"""
start: query ";"?
query: with_clause? compound order_by? limit?
with_clause: "WITH"i cte ("," cte)*
cte: ALIAS "AS"i "(" query ")"
compound: select_core (set_op select_core)*
set_op: "UNION"i "ALL"i? | "INTERSECT"i | "EXCEPT"i
select_core: "SELECT"i ("DISTINCT"i | "ALL"i)? select_list from_clause where? group_by? having?
           | "(" query ")"
select_list: select_item ("," select_item)*
select_item: STAR | QUALIFIED_STAR | expr ("AS"i ALIAS)?
from_clause: "FROM"i source join*
source: TABLE ("AS"i? SOURCE_ALIAS)? | "(" query ")" ("AS"i? SOURCE_ALIAS)?
join: "," source | (JOIN_KIND "OUTER"i?)? "JOIN"i source ("ON"i expr)?
JOIN_KIND: /(LEFT|RIGHT|FULL|INNER|CROSS|NATURAL)/i
where: "WHERE"i expr
group_by: "GROUP"i "BY"i expr ("," expr)*
having: "HAVING"i expr
order_by: "ORDER"i "BY"i order_item ("," order_item)*
order_item: expr ("ASC"i | "DESC"i)? ("NULLS"i ("FIRST"i | "LAST"i))?
limit: "LIMIT"i NUMBER ("OFFSET"i NUMBER)?

expr: prefix* operand (infix prefix* operand | suffix)*
prefix: "NOT"i | SIGN
infix: OPERATOR | "NOT"i? NEGATABLE
suffix: "IS"i "NOT"i? operand | "NOT"i? "IN"i "(" (query | expr_list) ")"
operand: literal | COLUMN | QUALIFIED_COLUMN | call | case | cast | "(" query ")" | "(" expr_list ")"
       | "NOT"i? "EXISTS"i "(" query ")"
expr_list: expr ("," expr)*
call: AGGREGATE "(" ("DISTINCT"i? expr | STAR) ")" | FUNCTION "(" expr_list? ")"
    | "extract"i "(" DATE_PART "FROM"i expr ")"
case: "CASE"i expr? ("WHEN"i expr "THEN"i expr)+ ("ELSE"i expr)? "END"i
cast: "CAST"i "(" expr "AS"i TYPE_NAME ")"
literal: STRING | NUMBER | KEYWORD_LITERAL

SIGN: /[-+]/
OPERATOR: /(AND|OR|==|!=|<>|<=|>=|=|<|>|\+|-|\*|\/|%|\|\|)/i
NEGATABLE: /(LIKE|GLOB|BETWEEN)/i
KEYWORD_LITERAL: /(NULL|TRUE|FALSE|CURRENT_DATE|CURRENT_TIMESTAMP)/i
STAR: "*"
ALIAS: /[A-Za-z_][A-Za-z0-9_]{0,30}/
// a literal of at most 100 characters (Spider's longest is 37): a candidate that never closes its quote stops
// here, instead of decoding to the token cap inside a string (20 s of a batch's time on 2 cores)
STRING: /'([^'\n]|''){0,100}'/ | /"[^"\n]{0,100}"/
NUMBER: /[0-9]+(\.[0-9]+)?/ | /\.[0-9]+/
TYPE_NAME: /(INT|INTEGER|BIGINT|REAL|FLOAT|DOUBLE|NUMERIC|DECIMAL|TEXT|VARCHAR|DATE|TIMESTAMP|BOOLEAN)/i
DATE_PART: /(YEAR|MONTH|DAY|QUARTER|WEEK|DOW|HOUR|MINUTE)/i
%ignore /[ \t\r\n]+/
"""

_REGEX_SPECIAL = set("\\.+*?()|[]{}^$#&-~/\"'")


def _escape(text: str) -> str:
    """Escape for a Lark /regex/ as llguidance reads it (Rust regex syntax): punctuation only."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def _ci(name: str) -> str:
    """A plain name, any letter case: [Ss][Ii]..."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() and c.upper() != c.lower() else _escape(c)
                   for c in name)


def name_regex(names) -> str:
    """One regex for a set of names: every spelling a model or a person might use (bare, any case, when plain;
    exactly as spelled inside double quotes, backticks or brackets otherwise)."""
    alts = set()
    for n in names:
        if is_plain_name(n):
            alts.add(_ci(n))
        alts.add(_escape('"' + n.replace('"', '""') + '"'))
        alts.add(_escape("`" + n + "`"))
        alts.add(_escape("[" + n + "]"))
    # longest first: Lark's Python regexes take the first alternative that matches ("farm" in "farm_competition")
    return "(" + "|".join(sorted(alts, key=lambda a: (-len(a), a))) + ")"


def sql_grammar(schema: Schema) -> str:
    """The Lark grammar for `schema` (a string; cached by schema fingerprint)."""
    return _grammar_for(schema.fingerprint(), tuple(t.name for t in schema.tables),
                        tuple(sorted({c.name for t in schema.tables for c in t.columns})))


@functools.lru_cache(maxsize=64)
def _grammar_for(_fingerprint: str, tables: tuple[str, ...], columns: tuple[str, ...]) -> str:
    table, column = name_regex(tables), name_regex(columns)
    qualifier = f"({SOURCE_ALIAS}|{table})"
    fn_names = "|".join(_ci(f) for f in sorted(FUNCTIONS, key=len, reverse=True))
    agg_names = "|".join(_ci(f) for f in sorted(AGGREGATES, key=len, reverse=True))
    return (_BASE
            + f"TABLE: /{table}/\n"
            + f"COLUMN: /{column}/\n"
            + f"QUALIFIED_COLUMN: /{qualifier}\\. ?{column}/\n"
            + f"QUALIFIED_STAR: /{qualifier}\\.\\*/\n"
            + f"SOURCE_ALIAS: /{SOURCE_ALIAS}/\n"
            + f"AGGREGATE: /({agg_names})/\n"
            + f"FUNCTION: /({fn_names})/\n")


@functools.lru_cache(maxsize=64)
def _lark_parser(grammar: str):
    from lark import Lark
    return Lark(grammar, parser="earley", lexer="dynamic", start="start")


def parses(grammar: str, sql: str) -> bool:
    """Whether `sql` is in the language of `grammar` (checked with Lark's Earley parser)."""
    from lark.exceptions import LarkError
    try:
        _lark_parser(grammar).parse(sql)
        return True
    except LarkError:
        return False
