"""The one function that turns (schema, question, examples) into model input.

Inference (`generate.py`) and training (`training/data.py`) both call `build_prompt`, so the model is
always asked in the words it was taught. Comments and sample values are *data*: they are quoted, cleaned
of control characters and capped, so a table comment cannot pose as an instruction.

>>> from nl2sql.schema import Schema, Table, Column, ForeignKey
>>> s = Schema("shop", "sqlite", (Table("t", (Column("id", "INTEGER", True), Column("home town", "TEXT"))),))
>>> print(build_prompt(s, "How many?"))
-- Database shop. Tables:
t(id number pk, "home town" text)
-- Question: How many?
-- SQL:
<BLANKLINE>
"""
from __future__ import annotations

import json
import re

from .schema import Schema

SQL_DIALECT = "sqlite"  # the dialect the model writes; validate.py transpiles it to the warehouse's

MAX_COMMENT_CHARS = 80
MAX_SAMPLE_CHARS = 24
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Control, zero-width, bidi and Unicode tag characters (the last can smuggle invisible ASCII instructions).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                      r"\ufff9-\ufffb\U000e0000-\U000e007f]+")


# Words that parse as SQL, not as a name, on at least one engine nl2sql serves (SQLite takes `End` bare,
# PostgreSQL does not): a table or column so named is written quoted, in the prompt and in the grammar.
RESERVED_WORDS = frozenset("""
select from where group by having order limit offset join left right full inner cross natural outer on as and or
not in is null like glob between exists union intersect except all distinct case when then else end cast asc desc
with true false current_date current_timestamp table
""".split())


def is_plain_name(name: str) -> bool:
    """Whether a name can be written bare (letters, digits, underscores, not starting with a digit, not an SQL
    keyword)."""
    return bool(_SAFE_NAME.match(name)) and name.lower() not in RESERVED_WORDS


def double_quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_name(name: str) -> str:
    """A table or column name as the model must write it: bare when plain, else double-quoted."""
    return name if is_plain_name(name) else double_quoted(name)


def _data(text: str, limit: int) -> str:
    """Untrusted text from the database, made inert: one line, capped, JSON-quoted."""
    text = _CONTROL.sub(" ", str(text)).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)


_TYPE_WORDS = (  # collapse every engine's types into the few words the model was trained on
    ("bool", "boolean"), ("int", "number"), ("real", "number"), ("floa", "number"), ("doub", "number"),
    ("dec", "number"), ("num", "number"), ("money", "number"), ("serial", "number"), ("hugeint", "number"),
    ("timestamp", "time"), ("date", "time"), ("time", "time"), ("year", "time"), ("interval", "time"),
    ("char", "text"), ("text", "text"), ("string", "text"), ("clob", "text"), ("enum", "text"),
    ("uuid", "text"), ("json", "text"),
)


def short_type(t: str) -> str:
    """Engine type → one of number, text, time, boolean, others (Spider's vocabulary).

    >>> [short_type(t) for t in ("VARCHAR(20)", "BIGINT", "TIMESTAMP WITH TIME ZONE", "blob", "")]
    ['text', 'number', 'time', 'others', 'text']
    """
    low = t.lower()
    if not low:
        return "text"
    for key, word in _TYPE_WORDS:
        if key in low:
            return word
    return "others"


def render_schema(schema: Schema) -> str:
    lines = [f"-- Database {schema.name}. Tables:"]
    for table in schema.tables:
        cols = []
        for c in table.columns:
            part = f"{quote_name(c.name)} {short_type(c.type)}"
            if c.primary_key:
                part += " pk"
            if c.comment:
                part += f" {_data(c.comment, MAX_COMMENT_CHARS)}"
            if c.samples:
                part += " e.g. " + ",".join(_data(v, MAX_SAMPLE_CHARS) for v in c.samples)
            cols.append(part)
        line = f"{quote_name(table.name)}({', '.join(cols)})"
        if table.comment:
            line += f" -- {_data(table.comment, MAX_COMMENT_CHARS)}"
        lines.append(line)
        for fk in table.foreign_keys:
            lines.append(f"-- {quote_name(table.name)}.{quote_name(fk.column)} = "
                         f"{quote_name(fk.ref_table)}.{quote_name(fk.ref_column)}")
    return "\n".join(lines)


def build_prompt(schema: Schema, question: str, examples: list[tuple[str, str]] = (), hints: str = "",
                 notes: str = "") -> str:
    """Model input for one question. The model continues it with one SQL statement, then end-of-text.

    `notes`: the glossary entries the question mentions (nl2sql/glossary.py `render`); `examples`: verified
    (question, SQL) pairs of this database (nl2sql/examples.py); `hints`: a line of database values the
    question seems to mention (nl2sql/values.py `format_hints`). All come after the schema, so the schema
    part stays a prefix shared by every question (its KV cache is reused).
    """
    parts = [render_schema(schema)]
    if notes:
        parts.append(notes)
    for q, sql in examples:
        parts.append(f"-- Question: {one_line(q)}\n-- SQL:\n{sql}")
    if hints:
        parts.append(hints)
    parts.append(f"-- Question: {one_line(question)}\n-- SQL:\n")
    return "\n".join(parts)


def one_line(text) -> str:
    """Text written into the prompt as is (a question, a glossary name): one line, no control characters."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())
