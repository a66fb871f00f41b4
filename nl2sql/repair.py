"""Repair: when the model's SQL names something the schema lacks, or the database refuses it, decode again.

A small model's typical slip is a real column on the wrong table (`T2.sex` where T2 is pets). The grammar
cannot rule that out (SELECT comes before FROM), but the slip is usually a close call: the runner-up token at
the least certain step of the failing name is often the right one. So the next attempt keeps the generation up
to that step, takes the runner-up there, and decodes greedily from it — a one-token beam search, spent only
on answers that failed. Every attempt passes the same validation and guarded executor as the first.
"""
from __future__ import annotations

import math
import re

from .errors import ExecutionError, QueryTimeout, ResourceLimitError, UnsafeSQLError, ValidationError

# the name a validation or database error blames, across sqlglot, SQLite, DuckDB, PostgreSQL and MariaDB wording
_BLAMED = [re.compile(p, re.I) for p in (
    r"Unknown (?:column|table)\W*([A-Za-z_][\w$]*)",
    r"Column '([A-Za-z_][\w$]*)' could not be resolved",
    r"no such (?:column|table): (?:[\w$]+\.)?([A-Za-z_][\w$]*)",
    r"ambiguous column name: (?:[\w$]+\.)?([A-Za-z_][\w$]*)",
    r'column "?(?:[\w$]+\.)?([A-Za-z_][\w$]*)"? (?:does not exist|not found)',
    r"Referenced column \"?([A-Za-z_][\w$]*)",
)]


def repairable(err: Exception) -> bool:
    """Mistakes another decoding may fix; never refusals on safety grounds or queries stopped for cost."""
    if isinstance(err, UnsafeSQLError) or isinstance(err, (QueryTimeout, ResourceLimitError)):
        return False
    return isinstance(err, (ValidationError, ExecutionError))


def blamed_name(message: str) -> str | None:
    """
    >>> blamed_name("The SQL names something the schema lacks: Column 'year' could not be resolved. Line: 1")
    'year'
    >>> blamed_name("no such column: T2.Sex")
    'Sex'
    """
    for pattern in _BLAMED:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


def next_branch(gen, message: str, decode, tried: set) -> tuple | None:
    """Token ids to force in the next attempt, or None when there is nothing left to try.

    gen: the failed Generation (ids, margins, runners_up); decode: ids -> text; tried: branches already used.
    """
    if not gen.ids:
        return None
    def open_steps(pool):
        return sorted((i for i in pool if gen.runners_up[i] >= 0 and math.isfinite(gen.margins[i])),
                      key=lambda i: gen.margins[i])
    # the least certain step of the failing name first, then the least certain steps anywhere
    for i in open_steps(_blamed_steps(gen, message, decode))[:1] + open_steps(range(len(gen.ids))):
        forced = tuple(gen.ids[:i]) + (gen.runners_up[i],)
        if forced not in tried:
            tried.add(forced)
            return forced
    return None


def _blamed_steps(gen, message: str, decode) -> list[int]:
    """The generation steps whose tokens spell the blamed name (with its table qualifier, if any)."""
    name = blamed_name(message)
    if not name:
        return []
    text = decode(gen.ids)
    m = re.search(rf"(?:\b[\w$]+\s*\.\s*)?[\"`\[]?\b{re.escape(name)}\b", text, re.I)
    if not m:
        return []
    start, end = m.span()
    ends = [len(decode(gen.ids[: i + 1])) for i in range(len(gen.ids))]
    starts = [0] + ends[:-1]
    return [i for i in range(len(gen.ids)) if starts[i] < end and ends[i] > start]
