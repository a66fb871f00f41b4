"""Scope checks on partial SQL: is every column bound to a table that is in scope, and does it exist there?

The grammar (nl2sql/grammar.py) guarantees that every name is a real table or column, but not that `T2.sex`
is a column of the table that T2 stands for: SELECT comes before FROM, and a context-free grammar cannot
carry that binding. The decoder (nl2sql/generate.py) asks `Binder.check` about each candidate token, PICARD
style, and either drops the token or backtracks to the start of the construct the check blames:

  - after FROM, a qualifier must be a declared alias or table of this query or an enclosing one, and the
    column after it must be (a prefix of) a column of that table; a bare column must belong to exactly one
    table in scope (two would make it ambiguous);
  - before FROM (the SELECT list), references wait; each FROM source, once complete, must have every column
    the SELECT list asked of its alias — otherwise the check blames the source's table, and the decoder
    takes another one; at the end of FROM every waiting reference must resolve.
A nested query sees its own sources and, for correlated references, those of the queries around it.
Derived tables and CTEs accept any column (their columns are not in the schema).

>>> from nl2sql.schema import Schema, Table, Column
>>> b = Binder(Schema("x", "sqlite", (Table("pets", (Column("petid"), Column("weight"))),
...                                   Table("student", (Column("stuid"), Column("sex"))))))
>>> b.check("SELECT T1.weight FROM pets AS T1 WHERE T1.weight > 1") is None
True
>>> b.check("SELECT T1.sex FROM pets AS T1 ")   # blames the table: offset of 'pets'
19
>>> b.check("SELECT petid FROM pets WHERE sex ")  # a bare column that no table in scope has
29
"""
from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass, field

from .grammar import AGGREGATES, FUNCTIONS
from .schema import Schema

_TOKEN = re.compile(r"""
    (?P<string>'(?:[^']|'')*'?)
  | (?P<quoted>"(?:[^"]|"")*"?|`[^`]*`?|\[[^\]]*\]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
  | (?P<punct>[(),.;*])
  | (?P<op><=|>=|<>|!=|==|\|\||[-+/%<>=])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.X | re.S)

KEYWORDS = frozenset("""
select from where group by having order limit offset join left right full inner cross natural outer on as and or
not in is null like glob between exists union intersect except all distinct case when then else end cast asc desc
nulls first last with true false current_date current_timestamp
""".split())
_FROM_ENDERS = frozenset({"where", "group", "having", "order", "limit", "union", "intersect", "except"})
_FUNCTION_WORDS = frozenset(w.lower() for w in AGGREGATES + FUNCTIONS)
_WORDS = KEYWORDS | _FUNCTION_WORDS  # what a bare word may also turn into
_SQL_TYPES_AND_PARTS = frozenset("""
int integer bigint real float double numeric decimal text varchar date timestamp boolean
year month day quarter week dow hour minute
""".split())  # CAST(x AS INT), extract(YEAR FROM x): what the grammar allows there
_SET_OPS = frozenset({"union", "intersect", "except"})
_JOIN_WORDS = frozenset({"join", "left", "right", "full", "inner", "cross", "natural", "outer"})


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    end: int

    @property
    def low(self) -> str:
        return self.text.lower()


@dataclass
class _Source:
    table: object          # schema Table, or None for a derived table / CTE (any column)
    start: int             # offset of the table name (what a failed binding blames)
    alias: str | None = None


@dataclass
class _Ref:
    qualifier: str | None  # lower-cased
    column: str            # lower-cased
    start: int


@dataclass
class _Scope:
    depth: int
    phase: str = "select"      # select -> from -> body
    sources: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    out_aliases: set = field(default_factory=set)
    expect: str = ""           # inside FROM: "table", "alias?" (after a table), "alias" (after AS)
    outputs: set = field(default_factory=set)   # names of the SELECT list's columns (a compound's ORDER BY)
    compound: set = field(default_factory=set)  # output names of the earlier SELECTs of a set operation
    natural: bool = False      # a NATURAL JOIN merges the columns its tables share: not ambiguous


class _Violation(Exception):
    def __init__(self, offset: int):
        self.offset = offset


@functools.lru_cache(maxsize=32)
def binder_for(schema: Schema) -> "Binder":
    """The Binder of a schema, kept for the last few: a large warehouse gives each question its own subset."""
    return Binder(schema)


def _unquote(text: str) -> str:
    if text[:1] in "\"`[":
        return text[1:-1].replace('""', '"') if len(text) > 1 else ""
    return text


class Binder:
    def __init__(self, schema: Schema):
        self.tables = {t.name.lower(): t for t in schema.tables}
        self.columns = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
        self.all_columns = set().union(*self.columns.values()) if self.columns else set()
        self.known = self.all_columns | set(self.tables) | _WORDS | _SQL_TYPES_AND_PARTS  # every bare word it uses
        self.known_sorted = sorted(self.known)

    def check(self, text: str, final: bool = False) -> int | None:
        """None if `text` can still become a well-bound query; else the offset of the construct to blame.
        `final`: the text is the whole query (the model wants to stop)."""
        try:
            self._walk(text, final)
        except _Violation as v:
            return v.offset
        return None

    # --- the walk ---------------------------------------------------------------------------------
    def _walk(self, text: str, final: bool) -> None:
        toks = [_Tok(m.lastgroup, m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)
                if m.lastgroup != "space"]
        scopes: list[_Scope] = []
        depth = 0
        n = len(toks)
        comp = [i + 1 < n or final or t.end < len(text) for i, t in enumerate(toks)]  # can it still grow?
        with_query = bool(toks) and toks[0].low == "with"  # CTE names are made up: no word check there
        for i, tok in enumerate(toks):
            complete = comp[i]
            nxt = toks[i + 1] if i + 1 < n else None
            prev = toks[i - 1] if i else None
            low = tok.low
            if tok.kind == "ident" and not with_query and (prev is None or prev.text != "." and prev.low != "as"):
                self._known_word(tok, complete, scopes)
            if tok.kind == "punct" and tok.text == "(":
                depth += 1
                continue
            if tok.kind == "punct" and tok.text == ")":
                while scopes and scopes[-1].depth == depth:
                    self._close(scopes.pop(), scopes)
                    if scopes and scopes[-1].phase == "from" and scopes[-1].expect == "table":
                        scopes[-1].sources.append(_Source(None, tok.start))   # a derived table
                        scopes[-1].expect = "alias?"
                depth -= 1
                continue
            if prev is not None and prev.text == "." and tok.kind == "ident":
                continue  # the column of a qualified name (T1.order_id, T1.group_id): checked with its qualifier
            if tok.kind == "ident" and low == "select":
                earlier = set()
                if scopes and scopes[-1].depth == depth and scopes[-1].phase != "select":
                    done = scopes.pop()
                    earlier = done.compound | done.outputs | done.out_aliases
                    self._close(done, scopes)  # a set operation's next SELECT
                if not scopes or scopes[-1].depth != depth:
                    scopes.append(_Scope(depth, compound=earlier))
                continue
            if not scopes:
                continue
            scope = scopes[-1]
            if scope.depth != depth:  # inside parentheses of this query (a call, a list): names only
                if tok.kind in ("ident", "quoted") and (low not in KEYWORDS or tok.kind == "quoted"):
                    self._reference(toks, i, scope, scopes, comp, prev, nxt)
                continue
            if tok.kind == "ident" and low in _SET_OPS:
                self._end_from(scope, scopes)
                continue
            if scope.phase == "from" and self._from_token(scope, scopes, tok, complete):
                continue
            if tok.kind == "ident" and low == "from" and scope.phase == "select":
                scope.phase, scope.expect = "from", "table"
                continue
            if tok.kind == "ident" and low in _FROM_ENDERS and scope.phase == "from":
                self._end_from(scope, scopes)
                continue
            if tok.kind in ("ident", "quoted") and (low not in KEYWORDS or tok.kind == "quoted"):
                self._reference(toks, i, scope, scopes, comp, prev, nxt)
        if final:
            while scopes:
                self._close(scopes.pop(), scopes)

    def _from_token(self, scope, scopes, tok, complete) -> bool:
        """Consume a token of the FROM clause; False when the token is not FROM's to handle."""
        low = tok.low
        if scope.expect == "table":
            if tok.kind in ("ident", "quoted") and not complete:
                return True  # a table name still being written (it may look like a keyword: "order" → orders)
            if tok.kind in ("ident", "quoted") and low not in KEYWORDS or tok.kind == "quoted":
                name = _unquote(tok.text).lower()
                if complete:
                    scope.sources.append(_Source(self.tables.get(name), tok.start))
                    scope.expect = "alias?"
                return True
            return tok.kind == "ident" and low in _JOIN_WORDS
        if tok.kind == "ident" and low == "as" and scope.expect == "alias?":
            scope.expect = "alias"
            return True
        if scope.expect in ("alias?", "alias") and tok.kind in ("ident", "quoted") and (
                low not in KEYWORDS or scope.expect == "alias"):
            if complete:
                scope.sources[-1].alias = _unquote(tok.text).lower()
                self._bind_source(scope, scope.sources[-1])
                scope.expect = ""
            return True
        if tok.kind == "punct" and tok.text == "," or tok.kind == "ident" and low in _JOIN_WORDS:
            scope.natural = scope.natural or low == "natural"
            if scope.expect == "alias?":
                self._bind_source(scope, scope.sources[-1])
            scope.expect = "table" if (tok.text == "," or low == "join") else scope.expect
            return True
        if tok.kind == "ident" and low == "on":
            if scope.expect == "alias?":
                self._bind_source(scope, scope.sources[-1])
            scope.expect = "on"
            return True
        return False

    def _bind_source(self, scope: _Scope, source: _Source) -> None:
        """A source is complete: the SELECT list's columns asked of its name must be its columns."""
        if source.table is None:
            return
        names = {source.alias} if source.alias else {source.table.name.lower()}
        cols = self.columns[source.table.name.lower()]
        for ref in scope.pending:
            if ref.qualifier in names and ref.column not in cols:
                raise _Violation(source.start)

    def _end_from(self, scope: _Scope, scopes) -> None:
        if scope.phase != "from":
            scope.phase = "body" if scope.phase == "select" else scope.phase
            return
        if scope.expect == "alias?" and scope.sources:
            self._bind_source(scope, scope.sources[-1])
        scope.phase, scope.expect = "body", ""
        for ref in scope.pending:
            if not self._resolves(ref.qualifier, ref.column, scopes) and not self._defer(scopes, ref):
                real = [s for s in scope.sources if s.table is not None]
                if ref.qualifier is None and len(scope.sources) == 1 and real:
                    raise _Violation(real[0].start)   # one table that lacks the column: take another table
                raise _Violation(ref.start)
        scope.pending = []

    def _close(self, scope: _Scope, outer) -> None:
        if scope.phase == "from":
            self._end_from(scope, outer + [scope])

    # --- references -------------------------------------------------------------------------------
    def _reference(self, toks, i, scope, scopes, comp, prev, nxt) -> None:
        tok, complete = toks[i], comp[i]
        if nxt is not None and nxt.text == "(":
            return  # a function name
        if prev is not None and prev.text == ".":
            return  # the column part of a qualified name: handled with its qualifier
        if prev is not None and prev.text == "(" and i >= 2 and toks[i - 2].low == "extract":
            return  # extract(YEAR FROM x): a date part, not a column
        if prev is not None and prev.kind == "ident" and prev.low == "as":
            scope.out_aliases.add(_unquote(tok.text).lower())
            return
        if scope.phase == "from" and scope.expect != "on":
            return
        name = _unquote(tok.text).lower()
        if tok.text[:1] == '"' and name not in self.all_columns and (nxt is None or nxt.text != "."):
            return  # SQLite reads a double-quoted word that names no column as a string literal
        if nxt is not None and nxt.text == ".":
            col_tok = toks[i + 2] if i + 2 < len(toks) else None
            col_complete = col_tok is not None and comp[i + 2]
            self._qualified(name, tok.start, col_tok, col_complete, scope, scopes)
            return
        if not complete:
            # a bare word still being written may become a keyword, a function or a column in scope
            if scope.phase != "select" and tok.kind == "ident" and not self._could_become(name, scope, scopes):
                raise _Violation(tok.start)
            return
        if nxt is None and name in _FUNCTION_WORDS:
            return  # "COUNT " may still be followed by "("
        if scope.phase == "select":
            scope.pending.append(_Ref(None, name, tok.start))
            scope.outputs.add(name)
        elif not self._resolves(None, name, scopes) and name not in scope.out_aliases | scope.compound and \
                not self._defer(scopes, _Ref(None, name, tok.start)):
            raise _Violation(tok.start)

    def _qualified(self, qualifier, start, col_tok, col_complete, scope, scopes) -> None:
        if scope.phase == "select":
            if col_tok is not None and col_tok.text != "*" and col_complete:
                scope.pending.append(_Ref(qualifier, _unquote(col_tok.text).lower(), start))
                scope.outputs.add(_unquote(col_tok.text).lower())
            return
        table = self._lookup(qualifier, scopes)
        if table is False:
            if col_tok is not None and col_tok.text != "*" and col_complete:
                if self._defer(scopes, _Ref(qualifier, _unquote(col_tok.text).lower(), start)):
                    return
            elif self._outer_select(scopes):
                return
            raise _Violation(start)   # no such alias or table in scope
        if table is None or col_tok is None or col_tok.text == "*":
            return
        col = _unquote(col_tok.text).lower()
        cols = self.columns[table.name.lower()]
        if col_complete and col not in cols or not col_complete and col_tok.kind == "ident" and \
                not any(c.startswith(col) for c in cols):
            raise _Violation(col_tok.start)

    def _known_word(self, tok, complete: bool, scopes) -> None:
        """A bare word must be (the start of) a keyword, function, table or column, or alias-short (T1, a):
        the grammar lets lexemes touch, so 'FROM' + 'flight' would otherwise read as one word, FROMflight."""
        w = tok.low
        aliases = {a for sc in scopes for a in sc.out_aliases}
        if len(w) <= 3 or (w in self.known or w in aliases if complete else self._starts_known(w, aliases)):
            return
        good = max((k for k in range(len(w), 0, -1) if self._starts_known(w[:k], aliases)), default=0)
        raise _Violation(tok.start + max(good, 1))

    def _starts_known(self, prefix: str, aliases) -> bool:
        i = bisect.bisect_left(self.known_sorted, prefix)
        return (i < len(self.known_sorted) and self.known_sorted[i].startswith(prefix)) or \
            any(a.startswith(prefix) for a in aliases)

    def _could_become(self, prefix: str, scope, scopes) -> bool:
        if self._outer_select(scopes):
            return True  # it may name a source of an enclosing query's FROM, still to come
        if any(w.startswith(prefix) for w in _WORDS) or any(a.startswith(prefix) for a in
                                                              scope.out_aliases | scope.compound):
            return True
        for sc in scopes:
            for s in sc.sources:
                if s.table is None or any(c.startswith(prefix) for c in self.columns[s.table.name.lower()]):
                    return True
                if (s.alias or s.table.name.lower()).startswith(prefix):
                    return True
        return False

    @staticmethod
    def _outer_select(scopes):
        """The innermost enclosing query still in its SELECT list (its FROM is still to come), or None."""
        return next((sc for sc in reversed(scopes[:-1]) if sc.phase == "select"), None)

    def _defer(self, scopes, ref: _Ref) -> bool:
        """A name that this query's scopes lack may belong to an enclosing query whose FROM is still to come
        (a correlated subquery in its SELECT list): that query checks it when its FROM ends."""
        outer = self._outer_select(scopes)
        if outer is not None:
            outer.pending.append(ref)
        return outer is not None

    def _lookup(self, qualifier: str, scopes):
        """The table a qualifier stands for: a Table, None (a source of unknown columns), or False (none)."""
        for scope in reversed(scopes):
            for s in scope.sources:
                if s.alias == qualifier or (s.alias is None and s.table is not None
                                            and s.table.name.lower() == qualifier):
                    return s.table
        return False

    def _resolves(self, qualifier, column, scopes) -> bool:
        if qualifier is not None:
            table = self._lookup(qualifier, scopes)
            return table is None or (table is not False and column in self.columns[table.name.lower()])
        for scope in reversed(scopes):  # the innermost scope that has the column decides
            owners = [s for s in scope.sources if s.table is None or column in self.columns[s.table.name.lower()]]
            if owners:
                # two tables of this scope have it: the engine would refuse it as ambiguous
                return len(owners) == 1 or any(s.table is None for s in owners) or scope.natural
        return False
