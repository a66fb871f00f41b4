"""A context-free grammar (Lark syntax, as llguidance reads it) for the SQL the model may write.

It is specialised per schema: table and column positions accept only the schema's names (bare when the
name is plain, double-quoted or backticked otherwise), so constrained decoding cannot invent a table.
It covers what analysts ask and everything in Spider's gold queries: joins, aggregates, GROUP BY/HAVING,
ORDER BY/LIMIT, nested subqueries, UNION/INTERSECT/EXCEPT, CASE, LIKE/IN/BETWEEN, IS NULL, arithmetic,
CAST and date functions. Keywords are case-insensitive. Compiled grammars are cached per schema.

>>> from nl2sql.schema import Schema, Table, Column
>>> g = sql_grammar(Schema("x", "sqlite", (Table("singer", (Column("name"), Column("Home Town"))),)))
>>> parses(g, 'SELECT T1."Home Town" FROM singer AS T1 WHERE name LIKE \\'%a%\\'')
True
>>> parses(g, "SELECT salary FROM singer")
False
"""
from __future__ import annotations

import functools
import json

from .prompt import double_quoted, is_plain_name
from .schema import Schema

AGGREGATES = ("count", "sum", "avg", "min", "max", "total", "group_concat")
FUNCTIONS = (
    "abs", "round", "length", "lower", "upper", "substr", "substring", "trim", "ltrim", "rtrim", "replace",
    "instr", "coalesce", "ifnull", "nullif", "iif", "strftime", "date", "time", "datetime", "julianday",
    "cast", "printf", "random", "typeof", "min", "max", "floor", "ceil", "ceiling", "sqrt", "power",
    "concat", "extract", "date_trunc", "year", "month", "day", "now", "current_date",
)

_BASE = r"""
start: query ";"?
query: with_clause? compound order_by? limit?
with_clause: "WITH"i cte ("," cte)*
cte: ALIAS "AS"i "(" query ")"
compound: select_core (set_op select_core)*
set_op: "UNION"i "ALL"i? | "INTERSECT"i | "EXCEPT"i
select_core: "SELECT"i ("DISTINCT"i | "ALL"i)? select_list from_clause? where? group_by? having?
           | "(" query ")"
select_list: select_item ("," select_item)*
select_item: "*" | qualifier "." "*" | expr ("AS"i ALIAS)?
from_clause: "FROM"i source (join)*
source: table_name ("AS"i? qualifier_alias)? | "(" query ")" ("AS"i? qualifier_alias)?
join: "," source | join_kind? "JOIN"i source ("ON"i expr)?
join_kind: "LEFT"i "OUTER"i? | "RIGHT"i "OUTER"i? | "FULL"i "OUTER"i? | "INNER"i | "CROSS"i | "NATURAL"i
where: "WHERE"i expr
group_by: "GROUP"i "BY"i expr ("," expr)*
having: "HAVING"i expr
order_by: "ORDER"i "BY"i order_item ("," order_item)*
order_item: expr ("ASC"i | "DESC"i)? ("NULLS"i ("FIRST"i | "LAST"i))?
limit: "LIMIT"i NUMBER ("OFFSET"i NUMBER)?

expr: disjunct ("OR"i disjunct)*
disjunct: conjunct ("AND"i conjunct)*
conjunct: "NOT"i conjunct | predicate
predicate: sum (comparison sum)?
         | sum "NOT"i? "BETWEEN"i sum "AND"i sum
         | sum "NOT"i? "IN"i "(" (query | expr_list) ")"
         | sum "NOT"i? ("LIKE"i | "GLOB"i) sum
         | sum "IS"i "NOT"i? ("NULL"i | sum)
         | "NOT"i? "EXISTS"i "(" query ")"
comparison: "=" | "==" | "!=" | "<>" | "<" | ">" | "<=" | ">="
sum: product (("+" | "-" | "||") product)*
product: unary (("*" | "/" | "%") unary)*
unary: "-" unary | "+" unary | atom
atom: literal | column | call | case | cast | "(" query ")" | "(" expr_list ")"
expr_list: expr ("," expr)*
call: AGGREGATE "(" ("DISTINCT"i)? expr ")" | "count"i "(" "*" ")" | FUNCTION "(" expr_list? ")"
    | "extract"i "(" DATE_PART "FROM"i expr ")"
case: "CASE"i expr? ("WHEN"i expr "THEN"i expr)+ ("ELSE"i expr)? "END"i
cast: "CAST"i "(" expr "AS"i TYPE_NAME ")"
column: (qualifier ".")? column_name
qualifier: table_name | qualifier_alias
literal: STRING | NUMBER | "NULL"i | "TRUE"i | "FALSE"i | "CURRENT_DATE"i | "CURRENT_TIMESTAMP"i

qualifier_alias: /[Tt][0-9]{1,2}/ | /[a-zA-Z]/
ALIAS: /[A-Za-z_][A-Za-z0-9_]{0,30}/
STRING: /'([^'\n]|'')*'/ | /"[^"\n]*"/
NUMBER: /[0-9]+(\.[0-9]+)?/ | /\.[0-9]+/
TYPE_NAME: /(INT|INTEGER|BIGINT|REAL|FLOAT|DOUBLE|NUMERIC|DECIMAL|TEXT|VARCHAR|DATE|TIMESTAMP|BOOLEAN)/i
DATE_PART: /(YEAR|MONTH|DAY|QUARTER|WEEK|DOW|HOUR|MINUTE)/i
%ignore /[ \t\r\n]+/
"""


def _alternatives(names) -> str:
    """Lark alternatives for a set of names: every spelling a model or a person might use."""
    alts = set()
    for n in names:
        if is_plain_name(n):
            alts.add(json.dumps(n) + "i")
        alts.add(json.dumps(double_quoted(n)))
        alts.add(json.dumps("`" + n + "`"))
        alts.add(json.dumps("[" + n + "]"))
    return " | ".join(sorted(alts))


def sql_grammar(schema: Schema) -> str:
    """The Lark grammar for `schema` (a string; cached by schema fingerprint)."""
    return _grammar_for(schema.fingerprint(), tuple(t.name for t in schema.tables),
                        tuple(sorted({c.name for t in schema.tables for c in t.columns})))


@functools.lru_cache(maxsize=64)
def _grammar_for(_fingerprint: str, tables: tuple[str, ...], columns: tuple[str, ...]) -> str:
    fn_names = " | ".join(json.dumps(f) + "i" for f in FUNCTIONS)
    agg_names = " | ".join(json.dumps(f) + "i" for f in AGGREGATES)
    return (_BASE
            + f"table_name: {_alternatives(tables)}\n"
            + f"column_name: {_alternatives(columns)}\n"
            + f"AGGREGATE: {agg_names}\n"
            + f"FUNCTION: {fn_names}\n")


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
