"""Question/SQL pairs for a new warehouse, from its own schema and glossary, before any analyst has logged one.

`nl2sql train --synth [--db URL]` trains on them, so a team's first day is not a model that has only seen
Spider. Templates are generic (nothing here knows any particular warehouse): counts, groupings, filters on the
column's real values, numeric aggregates and rankings, year ranges on date columns, foreign-key joins, and, from
the glossary, its metrics (overall, per category, per year), conditions and join rules. Every pair is validated
like model SQL and run through the guarded executor; it is kept only if it returns rows that are not all NULL.

SQL is written in the model's dialect (SQLite), with table-qualified names as the glossary writes them.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from nl2sql.errors import Nl2SqlError
from nl2sql.prompt import quote_name, short_type

MAX_VALUES = 6          # real values tried per text column
MAX_CARDINALITY = 40    # a text column with more distinct values is a name, not a category to group by
MAX_COLUMNS = 400       # columns profiled on a wide warehouse
_ID = re.compile(r"(^id$|_id$|^id_|Id$|ID$|_key$|^key$|_code$)")


@dataclass
class _Col:
    table: str
    name: str
    kind: str                 # number | text | time | boolean | others
    values: list              # most frequent real values (text), or [] if not profiled
    distinct: int = 0
    years: tuple = ()         # (first, last) year for a time column

    @property
    def ref(self) -> str:
        return f"{quote_name(self.table)}.{quote_name(self.name)}"

    @property
    def words(self) -> str:
        return _phrase(self.name)


def _phrase(name: str) -> str:
    from nl2sql.linking import _CAMEL
    parts = []
    for chunk in re.split(r"[\W_]+", name):
        parts += [p.lower() for p in _CAMEL.findall(chunk)]
    return " ".join(parts) or name


def _literal(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v) if isinstance(v, float) else str(v)
    return "'" + str(v).replace("'", "''") + "'"


class Synthesizer:
    def __init__(self, pipe, db=None, *, seed: int = 0, glossary=None):
        self.pipe, self.db = pipe, db
        self.schema = pipe.schema(db)
        self.wh = pipe.warehouse(db)
        self.rng = random.Random(seed)
        self.glossary = glossary if glossary is not None else pipe.glossary(db, self.schema)
        self.cols: dict[str, list[_Col]] = {}  # per table
        self._edges = self._fk_edges()
        self._profile()

    # --- what the warehouse holds --------------------------------------------------------------
    def _run(self, sql: str):
        from nl2sql.executor import run_checked
        from nl2sql.validate import validate
        checked = validate(sql, self.schema, settings=self.pipe.settings)
        return run_checked(self.wh, checked.sql, self.pipe.settings).df

    def _profile(self) -> None:
        budget = MAX_COLUMNS
        for t in self.schema.tables:
            fk_cols = {fk.column for fk in t.foreign_keys}
            for c in t.columns:
                kind = short_type(c.type)
                col = _Col(t.name, c.name, kind, [])
                self.cols.setdefault(t.name, []).append(col)
                if c.primary_key or c.name in fk_cols or _ID.search(c.name) or budget <= 0:
                    col.kind = "key"
                    continue
                budget -= 1
                try:
                    if kind == "text":
                        df = self._run(f"SELECT {quote_name(c.name)}, COUNT(*) FROM {quote_name(t.name)} WHERE "
                                       f"{quote_name(c.name)} IS NOT NULL GROUP BY {quote_name(c.name)} "
                                       f"ORDER BY COUNT(*) DESC, {quote_name(c.name)} LIMIT {MAX_CARDINALITY + 1}")
                        col.values = [v for v in df.iloc[:, 0].tolist() if isinstance(v, str) and 0 < len(v) <= 40]
                        col.distinct = len(df)
                    elif kind == "time":
                        df = self._run(f"SELECT MIN({quote_name(c.name)}), MAX({quote_name(c.name)}) FROM "
                                       f"{quote_name(t.name)}")
                        lo, hi = (str(df.iloc[0, 0])[:4], str(df.iloc[0, 1])[:4])
                        if lo.isdigit() and hi.isdigit():
                            col.years = (int(lo), int(hi))
                    elif kind == "number":
                        df = self._run(f"SELECT AVG({quote_name(c.name)}) FROM {quote_name(t.name)}")
                        avg = df.iloc[0, 0]
                        col.values = [round(float(avg))] if avg is not None and avg == avg else []
                except Nl2SqlError:
                    continue

    def _table_cols(self, table: str, kind: str) -> list[_Col]:
        return [c for c in self.cols.get(table, ()) if c.kind == kind]

    def _label(self, table: str) -> _Col | None:
        """The column that names a row of `table`: a text column called like a name or title, else the first."""
        texts = [c for c in self._table_cols(table, "text") if c.distinct > MAX_CARDINALITY]
        named = [c for c in self._table_cols(table, "text") if re.search(r"name|title", c.name, re.I)]
        return (named or texts or [None])[0]  # a category (status, channel) does not name a row

    def _categories(self, table: str) -> list[_Col]:
        return [c for c in self._table_cols(table, "text") if 1 < c.distinct <= MAX_CARDINALITY and c.values]

    # --- templates -----------------------------------------------------------------------------
    def candidates(self):
        """(template, question, sql) in the model's dialect, before they are run."""
        pick = self.rng.choice
        for t in self.schema.tables:
            T, noun = quote_name(t.name), _phrase(t.name)
            yield "count", pick([f"How many {noun} are there?", f"Count the {noun}."]), f"SELECT COUNT(*) FROM {T}"
            label = self._label(t.name)
            for c in self._categories(t.name):
                yield "count_by", pick([f"How many {noun} are there for each {c.words}?",
                                        f"Count the {noun} by {c.words}."]), \
                    f"SELECT {c.ref}, COUNT(*) FROM {T} GROUP BY {c.ref}"
                for v in c.values[:MAX_VALUES]:
                    yield "count_where", pick([f"How many {noun} have {c.words} {v}?", f"How many {v} {noun} are there?",
                                               f"Count the {noun} whose {c.words} is {v}."]), \
                        f"SELECT COUNT(*) FROM {T} WHERE {c.ref} = {_literal(v)}"
                    if label is not None and label is not c:
                        yield "list_where", pick([f"List the {label.words} of {noun} with {c.words} {v}.",
                                                  f"Which {noun} have {c.words} {v}?"]), \
                            f"SELECT {label.ref} FROM {T} WHERE {c.ref} = {_literal(v)}"
            for n in self._table_cols(t.name, "number"):
                agg, word = pick([("AVG", "average"), ("SUM", "total"), ("MAX", "highest"), ("MIN", "lowest")])
                yield "aggregate", f"What is the {word} {n.words} of {noun}?", f"SELECT {agg}({n.ref}) FROM {T}"
                for c in self._categories(t.name)[:2]:
                    yield "aggregate_by", f"What is the {word} {n.words} of {noun} for each {c.words}?", \
                        f"SELECT {c.ref}, {agg}({n.ref}) FROM {T} GROUP BY {c.ref}"
                if label is not None:
                    k, d, w = pick([(1, "DESC", "highest"), (1, "ASC", "lowest"), (5, "DESC", "highest")])
                    q = (f"Which {noun} has the {w} {n.words}?" if k == 1 else
                         f"Which {k} {noun} have the {w} {n.words}?")
                    yield "top", q, f"SELECT {label.ref} FROM {T} ORDER BY {n.ref} {d} LIMIT {k}"
                if n.values:
                    yield "compare", f"How many {noun} have {n.words} above {n.values[0]}?", \
                        f"SELECT COUNT(*) FROM {T} WHERE {n.ref} > {n.values[0]}"
            for d in self._table_cols(t.name, "time"):
                for y in self._years(d):
                    yield "year", pick([f"How many {noun} have a {d.words} in {y}?", f"How many {noun} in {y}?"]), \
                        f"SELECT COUNT(*) FROM {T} WHERE {d.ref} BETWEEN '{y}-01-01' AND '{y}-12-31'"
            for fk in t.foreign_keys:
                parent = self.schema.table(fk.ref_table)
                if parent is None:
                    continue
                P, pnoun = quote_name(parent.name), _phrase(parent.name)
                on = f"{T}.{quote_name(fk.column)} = {P}.{quote_name(fk.ref_column)}"
                plabel = self._label(parent.name)
                if plabel is not None:
                    yield "join_count", pick([f"How many {noun} does each {pnoun} have?",
                                              f"Count the {noun} for each {pnoun} {plabel.words}."]), \
                        f"SELECT {plabel.ref}, COUNT(*) FROM {T} JOIN {P} ON {on} GROUP BY {plabel.ref}"
                for c in self._categories(parent.name)[:2]:
                    for v in c.values[:3]:
                        yield "join_where", f"How many {noun} are there for {pnoun} with {c.words} {v}?", \
                            f"SELECT COUNT(*) FROM {T} JOIN {P} ON {on} WHERE {c.ref} = {_literal(v)}"
        yield from self._glossary_candidates()

    def _years(self, col: _Col, n: int = 2) -> list[int]:
        if not col.years:
            return []
        lo, hi = col.years
        return sorted(self.rng.sample(range(lo, hi + 1), min(n, hi - lo + 1)))

    def _glossary_candidates(self):
        if not self.glossary:
            return
        joins = [e for e in self.glossary.entries if e.section == "joins"]
        for e in self.glossary.entries:
            tables = list(dict.fromkeys(t for t, _ in e.columns))
            if e.section == "metrics":
                frm = self._join(tables)
                if frm is None:
                    continue
                where = _where(e.filter)
                yield "metric", f"What is the total {e.name}?", f"SELECT {e.sql} FROM {frm}{where}"
                year_conds = [(y, f"{d.ref} BETWEEN '{y}-01-01' AND '{y}-12-31'")
                              for t in tables for d in self._table_cols(t, "time") for y in self._years(d, 3)]
                for y, cond in year_conds:
                    yield "metric_year", f"What was the {e.name} in {y}?", \
                        f"SELECT {e.sql} FROM {frm}{_where(e.filter, cond)}"
                for other in self._neighbours(tables):
                    frm2 = self._join(tables + [other])
                    if frm2 is None:
                        continue
                    for c in self._categories(other)[:3]:
                        yield "metric_by", self.rng.choice([f"What is the {e.name} of each {c.words}?",
                                                            f"Show {e.name} by {c.words}."]), \
                            f"SELECT {c.ref}, {e.sql} FROM {frm2}{where} GROUP BY {c.ref}"
                        for y, cond in year_conds[:2]:
                            yield "metric_by_year", f"What was the {e.name} of each {c.words} in {y}?", \
                                f"SELECT {c.ref}, {e.sql} FROM {frm2}{_where(e.filter, cond)} GROUP BY {c.ref}"
                    label = self._label(other)
                    if label is not None:
                        k = self.rng.choice([1, 5, 10])
                        q = (f"Which {_phrase(other)} had the highest {e.name}?" if k == 1 else
                             f"Which {k} {_phrase(other)} had the highest {e.name}?")
                        yield "metric_top", q, (f"SELECT {label.ref}, {e.sql} FROM {frm2}{where} GROUP BY {label.ref} "
                                                f"ORDER BY {e.sql} DESC LIMIT {k}")
            elif e.section == "terms" and len(tables) == 1:
                T, noun = quote_name(tables[0]), _phrase(tables[0])
                if _is_condition(e.sql):
                    yield "term_where", f"How many {noun} are {e.name}?", f"SELECT COUNT(*) FROM {T} WHERE {e.sql}"
                elif not _is_aggregate(e.sql):
                    agg, word = self.rng.choice([("AVG", "average"), ("MAX", "highest"), ("SUM", "total")])
                    yield "term_value", f"What is the {word} {e.name} of {noun}?", f"SELECT {agg}({e.sql}) FROM {T}"
        for j in joins:
            tables = list(dict.fromkeys(t for t, _ in j.columns))
            if len(tables) != 2:
                continue
            a, b = tables
            frm = f"{quote_name(a)} JOIN {quote_name(b)} ON {j.sql}"
            for c in (self._categories(b) + self._table_cols(b, "number"))[:6]:
                yield "join_rule", f"How many {_phrase(a)} are there for each {c.words}?", \
                    f"SELECT {c.ref}, COUNT(*) FROM {frm} GROUP BY {c.ref}"
                for d in self._table_cols(a, "time"):
                    for y in self._years(d, 1):
                        yield "join_rule_year", f"How many {_phrase(a)} were there for each {c.words} in {y}?", \
                            (f"SELECT {c.ref}, COUNT(*) FROM {frm} WHERE {d.ref} BETWEEN '{y}-01-01' AND "
                             f"'{y}-12-31' GROUP BY {c.ref}")

    def _fk_edges(self) -> dict[str, list[tuple[str, str]]]:
        """table -> [(table joined to it by a foreign key, the ON condition)], both directions."""
        edges: dict[str, list[tuple[str, str]]] = {}
        for t in self.schema.tables:
            for fk in t.foreign_keys:
                if self.schema.table(fk.ref_table) is None:
                    continue
                on = (f"{quote_name(t.name)}.{quote_name(fk.column)} = "
                      f"{quote_name(fk.ref_table)}.{quote_name(fk.ref_column)}")
                edges.setdefault(t.name, []).append((fk.ref_table, on))
                edges.setdefault(fk.ref_table, []).append((t.name, on))
        return edges

    def _neighbours(self, tables: list[str]) -> list[str]:
        """Tables one foreign key away from `tables`, not among them, in schema order."""
        out = []
        for t in self.schema.tables:
            for fk in t.foreign_keys:
                if t.name in tables and fk.ref_table not in tables:
                    out.append(fk.ref_table)
                elif fk.ref_table in tables and t.name not in tables:
                    out.append(t.name)
        return list(dict.fromkeys(out))

    def _join(self, tables: list[str]) -> str | None:
        """FROM clause joining `tables` along foreign keys (a shortest path through other tables if needed)."""
        tables = list(dict.fromkeys(tables))
        joined, parts = [tables[0]], [quote_name(tables[0])]
        for target in tables[1:]:
            if target in joined:
                continue
            path = _bfs(self._edges, joined, target)
            if path is None:
                return None
            for nxt, on in path:
                if nxt not in joined:
                    joined.append(nxt)
                    parts.append(f"JOIN {quote_name(nxt)} ON {on}")
        return " ".join(parts)

    # --- the pairs ---------------------------------------------------------------------------------
    def pairs(self, limit: int = 400, per_template: int = 60) -> list[dict]:
        """Up to `limit` pairs that validate and return rows, at most `per_template` of each template."""
        from nl2sql.querylog import db_key
        seen, counts, out = set(), {}, []
        cands = list(self.candidates())
        self.rng.shuffle(cands)
        for template, question, sql in cands:
            if sql in seen or counts.get(template, 0) >= per_template:
                continue
            seen.add(sql)
            try:
                df = self._run(sql)
            except Nl2SqlError:
                continue
            if df is None or df.empty or df.isna().all().all() or (len(df) == 1 and (df.fillna(0) == 0).all().all()):
                continue  # no rows, or one row of zeros/NULLs (a count over an empty table): nothing to learn
            counts[template] = counts.get(template, 0) + 1
            out.append({"question": question, "sql": sql, "db": db_key(self.db), "template": template})
            if len(out) >= limit:
                break
        return out


def _where(*conditions: str) -> str:
    """ WHERE a AND b over the non-empty conditions, or nothing."""
    kept = [c for c in conditions if c]
    return f" WHERE {' AND '.join(kept)}" if kept else ""


def _bfs(edges: dict, start: list[str], target: str):
    from collections import deque
    prev = {s: None for s in start}
    queue = deque(start)
    while queue:
        cur = queue.popleft()
        if cur == target:
            path = []
            while prev[cur] is not None:
                p, on = prev[cur]
                path.append((cur, on))
                cur = p
            return path[::-1]
        for nxt, on in edges.get(cur, ()):
            if nxt not in prev:
                prev[nxt] = (cur, on)
                queue.append(nxt)
    return None


def _is_condition(sql: str) -> bool:
    import sqlglot
    from sqlglot import exp
    try:
        node = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.SqlglotError:
        return False
    return isinstance(node, (exp.Predicate, exp.Connector, exp.Not, exp.Is, exp.In, exp.Between, exp.Like))


def _is_aggregate(sql: str) -> bool:
    import sqlglot
    from sqlglot import exp
    try:
        return any(True for _ in sqlglot.parse_one(sql, read="sqlite").find_all(exp.AggFunc))
    except sqlglot.errors.SqlglotError:
        return False


def synthesize(pipe, db=None, *, limit: int = 400, seed: int = 0) -> list[dict]:
    """Pairs {question, sql, db, template} for `db` (see the module docstring)."""
    return Synthesizer(pipe, db, seed=seed).pairs(limit)
