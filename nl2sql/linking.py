"""Schema linking: pick the few tables a question needs out of a large schema, before prompting.

A `SchemaIndex` holds one BM25 document per table (its name, comment, column names and comments) and one per
column (its name, its table's name, type, comment, sample values), plus the foreign-key graph. For a question,
`prune` ranks tables by

    BM25(table doc) + COLUMN_WEIGHT * best BM25(column doc) + MENTION_BONUS if the question names the table
    + NEIGHBOUR_WEIGHT * best score of an FK neighbour (a junction table rises with the tables it joins)

(names split into singular words; long words also match by prefix), keeps the `max_tables` best (tables that match
no word only up to `MIN_TABLES`, so the result is never empty), adds the shortest foreign-key path (undirected) that
joins each to the ones kept before it and any table FK-joined to two kept ones (a many-to-many bridge), within
`max_prompt_columns`, and returns a `Linked` whose `schema` is a `Schema` with only those tables. Very wide tables
keep their key columns plus the best-matching others. Schemas up to `PASSTHROUGH_TABLES` tables and
`PASSTHROUGH_COLUMNS` columns pass through whole: the model was trained on whole Spider schemas, and pruning them
would only risk dropping a table it needs. `outside_names` lists the names a query uses that the full schema has
but the subset lacks, and `widen` adds back what holds them (called once, when validation fails on one).

Indexes are cached in memory and on disk (JSON, under `<cache_dir>/linking/`, written atomically), keyed by a
hash of everything they are built from, so a schema that changes between questions gets a new index.
Nothing here reads the database: the text indexed is what `schema.introspect` already put into the Schema.

>>> from nl2sql.schema import Schema, Table, Column, ForeignKey
>>> t = [Table(f"t{i}", (Column("id", "INT", True), Column(f"c{i}"))) for i in range(20)]
>>> t.append(Table("singer", (Column("singer_id", "INT", True), Column("name"), Column("country"))))
>>> t.append(Table("concert", (Column("id", "INT", True), Column("singer_id", "INT")), "",
...                (ForeignKey("singer_id", "singer", "singer_id"),)))
>>> index = SchemaIndex.build(Schema("x", "duckdb", tuple(t)))
>>> linked = index.prune("How many singers are from France?", max_tables=1)
>>> linked.tables
['singer']
>>> index.prune("Concerts of singers from France", max_tables=2).tables
['concert', 'singer']
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from .schema import Schema, Table

INDEX_VERSION = 1  # bump when the documents or their format change: old cache files are then ignored

# Measured on Spider train (benchmarks/linking_recall.py): see the README's linking section.
PASSTHROUGH_TABLES = 12      # schemas this small go to the model whole ...
PASSTHROUGH_COLUMNS = 150    # ... when they also have at most this many columns
DEFAULT_MAX_TABLES = 20      # ranked tables kept at most (FK path tables come on top) ...
MIN_TABLES = 3               # ... but tables matching no word of the question only up to this many
WIDE_TABLE_COLUMNS = 40      # a table wider than this keeps its key columns plus its best-matching others

COLUMN_WEIGHT = 0.5
MENTION_BONUS = 3.0
VALUE_BONUS = 3.0  # a value of the table's that the question mentions (nl2sql.values) counts as naming it; untuned
NEIGHBOUR_WEIGHT = 0.3
K1, B = 1.2, 0.75
BRIDGES = True  # also keep tables that join two kept tables
MAX_PATH_TABLES = 3  # a ranked table whose FK path to the kept ones needs more tables than this is left out
PREFIX_CHARS = 5  # words this long or longer also match by their first letters ('professor' ~ 'profession')

_STOPWORDS = frozenset("""
a about above after all also an and any are as at be been before being below between both but by can could
did do does doing done each either every for from give had has have having he her here hers him his how i if
in into is it its just list many me more most much my name named names no nor not of off on once only or other
our out over own please return same shall she should show so some such tell than that the their theirs them
then there these they this those through to too under until up very was we were what when where whether which
while who whom whose why will with would you your find display get what's whats number count total
""".split())
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+|[^\W\d_]+")


def _stem(w: str) -> str:
    """Plural to singular, roughly: enough for 'singers' to meet 'singer' and 'countries' to meet 'country'."""
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "xes", "ches", "shes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _with_prefixes(ws: list[str]) -> list[str]:
    """The words plus a prefix token for each long one, so near spellings still meet (weaker, rarer match)."""
    if not PREFIX_CHARS:
        return ws
    return ws + ["~" + w[:PREFIX_CHARS] for w in ws if len(w) > PREFIX_CHARS and w.isalpha()]


def words(text: str, *, stop: bool = False) -> list[str]:
    """Lower-case, singular words of a name or sentence: snake_case, camelCase, digits and spaces all split.

    >>> words("CarMakers.FullName_2")
    ['car', 'maker', 'full', 'name', '2']
    >>> words("How many singers are there?", stop=True)
    ['singer']
    """
    out = []
    for chunk in re.split(r"[\W_]+", str(text)):
        for part in _CAMEL.findall(chunk):
            w = _stem(part.lower())
            if w and not (stop and w in _STOPWORDS):
                out.append(w)
    return out


class _BM25:
    """Okapi BM25 over tokenised documents, with an inverted index (a query touches only its terms' postings)."""

    def __init__(self, docs: list[list[str]]):
        self.n = len(docs)
        self.lengths = [len(d) for d in docs]
        self.avg = (sum(self.lengths) / self.n) if self.n else 1.0
        self.postings: dict[str, dict[int, int]] = {}
        for i, doc in enumerate(docs):
            for w in doc:
                p = self.postings.setdefault(w, {})
                p[i] = p.get(i, 0) + 1
        self.idf = {w: math.log(1 + (self.n - len(p) + 0.5) / (len(p) + 0.5)) for w, p in self.postings.items()}

    def scores(self, query: list[str]) -> dict[int, float]:
        out: dict[int, float] = {}
        for w in dict.fromkeys(query):  # each distinct term once
            for i, tf in self.postings.get(w, {}).items():
                norm = tf + K1 * (1 - B + B * self.lengths[i] / (self.avg or 1.0))
                out[i] = out.get(i, 0.0) + self.idf[w] * tf * (K1 + 1) / norm
        return out


@dataclass
class Linked:
    """What `prune` returns: the schema to prompt with and how it was chosen."""
    schema: Schema                   # the tables kept (all columns, unless a table is very wide)
    tables: list[str]                # kept table names, best first (FK path tables after the table that needed them)
    scores: dict[str, float]         # every table of the full schema → its score for this question
    widened: bool = False            # widen() added tables after the model named something outside the subset
    pruned: bool = True              # False when the schema was small enough to pass through whole
    question: str = ""
    path_tables: list[str] = field(default_factory=list)  # tables kept only because they join two kept tables
    value_hints: tuple = ()          # what prune() was given, so widen() ranks columns the same way


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _segments(name: str) -> list[list[str]]:
    """The words of a table name, and of its last part after a schema prefix ('sales.orders', 'src__orders')."""
    full = words(name)
    last = re.split(r"\.|__", name)[-1]
    tail = words(last)
    return [full] if tail == full or not tail else [full, tail]


def _contains(seq: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(seq[i:i + n] == phrase for i in range(len(seq) - n + 1))


class SchemaIndex:
    """Retrieval index of one schema. Build with `SchemaIndex.build(schema, settings)` (cached)."""

    def __init__(self, schema: Schema, key: str, table_docs: list[list[str]], column_docs: list[list[str]]):
        self.schema = schema
        self.key = key
        self._table_docs = table_docs
        self._column_docs = column_docs
        self._col_owner: list[tuple[int, int]] = [(ti, ci) for ti, t in enumerate(schema.tables)
                                                  for ci in range(len(t.columns))]
        self._tables_bm25 = _BM25(table_docs)
        self._columns_bm25 = _BM25(column_docs)
        self._names = [t.name for t in schema.tables]
        self._name_words = [_segments(t.name) for t in schema.tables]
        # FK graph, undirected, by table position; a reference to a table not in the schema is ignored
        by_lower: dict[str, int] = {}
        for i, t in enumerate(schema.tables):
            by_lower.setdefault(t.name.lower(), i)
        self._by_lower = by_lower
        self._neighbours: list[list[int]] = [[] for _ in schema.tables]
        self._key_columns: list[set[str]] = [{c.name.lower() for c in t.columns if c.primary_key}
                                             for t in schema.tables]
        for i, t in enumerate(schema.tables):
            for fk in t.foreign_keys:
                j = by_lower.get(fk.ref_table.lower())
                if j is None:
                    continue
                self._key_columns[i].add(fk.column.lower())
                self._key_columns[j].add(fk.ref_column.lower())
                if j != i and j not in self._neighbours[i]:
                    self._neighbours[i].append(j)
                    self._neighbours[j].append(i)
        for n in self._neighbours:
            n.sort()

    # --- building and caching ---------------------------------------------------------------------------------
    @classmethod
    def build(cls, schema: Schema, settings=None, *, extra: dict | None = None) -> "SchemaIndex":
        """The index of `schema`, from memory, else from `<cache_dir>/linking/`, else built and saved there.

        `extra` adds text a team wrote: {"table": "text", "table.column": "text"} (a glossary, notes).
        """
        extra = {str(k): str(v) for k, v in (extra or {}).items()}
        key = _hash(INDEX_VERSION, schema.fingerprint(), schema.to_json(), sorted(extra.items()))
        with _memory_lock:
            hit = _memory.get(key)
            if hit is not None:
                _memory.move_to_end(key)
                return hit
        path = _cache_path(settings, key)
        index = cls._load(schema, key, path) if path else None
        if index is None:
            table_docs, column_docs = _documents(schema, extra)
            index = cls(schema, key, table_docs, column_docs)
            if path:
                index._save(path)
        with _memory_lock:
            _memory[key] = index
            while len(_memory) > _MEMORY_SLOTS:
                _memory.popitem(last=False)
        return index

    @classmethod
    def _load(cls, schema: Schema, key: str, path: Path) -> "SchemaIndex | None":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: rebuilt and rewritten
        if (data.get("version") != INDEX_VERSION or data.get("key") != key
                or len(data.get("tables", ())) != len(schema.tables)
                or len(data.get("columns", ())) != schema.column_count):
            return None
        docs = data["tables"] + data["columns"]
        if not all(isinstance(d, list) and all(isinstance(w, str) for w in d) for d in docs):
            return None  # not what _save writes: rebuilt
        return cls(schema, key, data["tables"], data["columns"])

    def _save(self, path: Path) -> None:
        payload = json.dumps({"version": INDEX_VERSION, "key": self.key, "schema": self.schema.name,
                              "tables": self._table_docs, "columns": self._column_docs})
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
        except OSError:  # a read-only or full cache dir costs a rebuild next time, nothing else
            if tmp:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # --- ranking ----------------------------------------------------------------------------------------------
    def rank(self, question: str, value_hints=()) -> tuple[list[float], list[dict[int, float]]]:
        """Score of every table (by position) and, per table, the scores of its matching columns.

        `value_hints`: values of the database the question mentions (nl2sql.values.ValueHint, or anything with
        .table, .column and .score 0-100): their table scores as if named, their column as a strong match."""
        q = words(question, stop=True)
        q_all = words(question)
        t_scores = self._tables_bm25.scores(_with_prefixes(q))
        c_scores = self._columns_bm25.scores(_with_prefixes(q))
        per_table: list[dict[int, float]] = [{} for _ in self.schema.tables]
        for k, s in c_scores.items():
            ti, ci = self._col_owner[k]
            per_table[ti][ci] = s
        value_bonus = [0.0] * len(self.schema.tables)
        value_columns: list[tuple[int, int]] = []
        for h in value_hints:
            ti = self._by_lower.get(str(getattr(h, "table", "")).lower())
            if ti is None:
                continue
            strength = min(100.0, max(0.0, float(getattr(h, "score", 100.0)))) / 100
            value_bonus[ti] = max(value_bonus[ti], VALUE_BONUS * strength)
            ci = next((k for k, c in enumerate(self.schema.tables[ti].columns)
                       if c.name.lower() == str(getattr(h, "column", "")).lower()), None)
            if ci is not None:
                value_columns.append((ti, ci))
        base = []
        for i in range(len(self.schema.tables)):
            s = t_scores.get(i, 0.0) + value_bonus[i]
            if per_table[i]:
                s += COLUMN_WEIGHT * max(per_table[i].values())
            if any(_contains(q_all, seg) for seg in self._name_words[i]):
                s += MENTION_BONUS
            base.append(s)
        final = []
        for i, s in enumerate(base):
            best_n = max((base[j] for j in self._neighbours[i]), default=0.0)
            # a tiny prior for well-connected tables, so a question that matches nothing still gets hub tables
            final.append(s + NEIGHBOUR_WEIGHT * best_n + 1e-3 * math.log1p(len(self._neighbours[i])))
        for ti, ci in value_columns:  # a column holding a mentioned value survives the narrowing of its table
            per_table[ti][ci] = per_table[ti].get(ci, 0.0) + 1000.0
        return final, per_table

    def prune(self, question: str, *, max_tables: int = DEFAULT_MAX_TABLES, max_prompt_columns: int = 1000,
              wide_table_columns: int = WIDE_TABLE_COLUMNS, passthrough: bool = True, value_hints=()) -> Linked:
        """The subset of the schema to prompt with for `question` (never empty). `value_hints`: see `rank`."""
        scores, col_scores = self.rank(question, value_hints)
        by_name = {self._names[i]: round(s, 4) for i, s in enumerate(scores)}
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        small = (len(self.schema.tables) <= PASSTHROUGH_TABLES and self.schema.column_count <= PASSTHROUGH_COLUMNS)
        if passthrough and small and self.schema.column_count <= max_prompt_columns:
            return Linked(self.schema, [self._names[i] for i in order], by_name, pruned=False, question=question)
        kept: list[int] = []
        path_only: list[int] = []
        ranked_kept = 0
        budget = max(1, max_prompt_columns)
        wide_table_columns = max(1, min(wide_table_columns, budget))  # even the best table alone must fit
        used = 0
        for i in order:
            if ranked_kept >= max(1, max_tables) or (ranked_kept >= MIN_TABLES and scores[i] < _MATCHED):
                break
            if i in kept:
                ranked_kept += 1  # already there as a path table: now it counts as ranked
                path_only.remove(i)
                continue
            new = self._path_to(i, kept, MAX_PATH_TABLES) if kept else [i]
            if new is None:  # joined to the kept tables only by a long path: a look-alike more than a partner
                continue
            cost = sum(self._width(j, wide_table_columns) for j in new)
            if kept and used + cost > budget:
                continue  # (kept alone, without its path, it would break the subset's FK connectivity)
            kept.extend(new)
            path_only.extend(j for j in new if j != i)
            used += cost
            ranked_kept += 1
        if BRIDGES:
            # a table joined by FK to two kept tables is how they usually meet (many-to-many): keep it too
            kept_set = set(kept)
            for j in range(len(self._names)):
                if j not in kept_set and sum(n in kept_set for n in self._neighbours[j]) >= 2:
                    cost = self._width(j, wide_table_columns)
                    if used + cost <= budget:
                        kept.append(j)
                        path_only.append(j)
                        used += cost
        out = self._linked(kept, path_only, by_name, col_scores, question, wide_table_columns, budget)
        out.value_hints = tuple(value_hints)
        return out

    def outside_names(self, sql: str, linked: Linked, dialect: str = "sqlite") -> list[str]:
        """Tables and columns `sql` uses that the full schema has but `linked.schema` lacks: what `widen` needs
        when validation against the subset fails. Unparsable SQL gives []."""
        import sqlglot
        from sqlglot import exp
        try:
            tree = sqlglot.parse_one(sql, read=dialect)
        except Exception:
            return []
        if tree is None:
            return []
        kept = {t.name.lower(): t for t in linked.schema.tables}
        kept_columns = {c.name.lower() for t in linked.schema.tables for c in t.columns}
        all_columns = {c.name.lower() for t in self.schema.tables for c in t.columns}
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        out, aliases = [], {}
        for t in tree.find_all(exp.Table):
            low = t.name.lower()
            if low in ctes:
                continue
            aliases[t.alias_or_name.lower()] = low
            if low not in kept and low in self._by_lower and self._names[self._by_lower[low]] not in out:
                out.append(self._names[self._by_lower[low]])
        for c in tree.find_all(exp.Column):
            col = c.name.lower()
            owner = aliases.get(c.table.lower()) if c.table else None
            if owner in kept:
                missing = kept[owner].column(col) is None and self.schema.tables[self._by_lower[owner]].column(col)
            else:
                missing = not owner and col not in kept_columns and col in all_columns
            if missing and c.name not in out:
                out.append(c.name)
        return out

    def widen(self, linked: Linked, names, *, max_tables_per_name: int = 2,
              wide_table_columns: int = WIDE_TABLE_COLUMNS) -> Linked:
        """`linked` plus what holds `names` (tables, `table.column` or bare columns the model used outside the
        subset, e.g. from `outside_names`): missing tables join with their FK path, and columns a very wide
        table was narrowed without come back. A bare column goes to the kept tables that have it, else to the
        `max_tables_per_name` best-scoring tables that do. Unknown names are ignored."""
        if not linked.pruned:
            return linked
        scores = [linked.scores.get(n, 0.0) for n in self._names]
        kept = [self._by_lower[n.lower()] for n in linked.tables if n.lower() in self._by_lower]
        path_only = [self._by_lower[n.lower()] for n in linked.path_tables if n.lower() in self._by_lower]
        force: dict[int, set[str]] = {}
        for raw in names:
            low = str(raw).strip().strip('"`[]').lower()
            table_part, _, col_part = low.rpartition(".")
            if low in self._by_lower:
                hits = [self._by_lower[low]]
            elif table_part in self._by_lower:
                hits = [self._by_lower[table_part]]
                force.setdefault(hits[0], set()).add(col_part)
            else:
                holders = [i for i, t in enumerate(self.schema.tables) if t.column(low) is not None]
                hits = [i for i in holders if i in kept] or sorted(
                    holders, key=lambda i: (-scores[i], i))[:max_tables_per_name]
                for i in hits:
                    force.setdefault(i, set()).add(low)
            for i in hits:
                if i not in kept:
                    new = self._path_to(i, kept) if kept else [i]
                    kept.extend(new)
                    path_only.extend(j for j in new if j != i)
        _, col_scores = self.rank(linked.question, linked.value_hints)
        out = self._linked(kept, path_only, linked.scores, col_scores, linked.question, wide_table_columns, None,
                           force)
        out.widened, out.value_hints = True, linked.value_hints
        return out

    # --- helpers ----------------------------------------------------------------------------------------------
    def _width(self, i: int, wide: int) -> int:
        n = len(self.schema.tables[i].columns)
        return n if n <= wide else max(wide, len(self._key_columns[i]))

    def _path_to(self, start: int, kept: list[int], max_between: int | None = None) -> list[int] | None:
        """`start` and the tables on the shortest FK path from it to any kept table (BFS, deterministic);
        None when more than `max_between` tables lie between; [start] when no path exists."""
        targets = set(kept)
        prev = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node in targets:
                path = []
                node = prev[node]
                while node is not None:
                    path.append(node)
                    node = prev[node]
                if max_between is not None and len(path) - 1 > max_between:
                    return None
                return path[::-1]  # from start to the table just before the kept one
            for nb in self._neighbours[node]:
                if nb not in prev:
                    prev[nb] = node
                    queue.append(nb)
        return [start]  # not connected to anything kept

    def _linked(self, kept, path_only, by_name, col_scores, question, wide, budget, force=None) -> Linked:
        tables = []
        for i in sorted(kept):  # schema order, as the model saw schemas in training
            t = self.schema.tables[i]
            if len(t.columns) > wide:
                t = self._narrow(i, col_scores[i], wide, (force or {}).get(i, ()))
            tables.append(t)
        kept_lower = {t.name.lower() for t in tables}  # FKs to tables left out would name unknown tables
        tables = [Table(t.name, t.columns, t.comment,
                        tuple(fk for fk in t.foreign_keys if fk.ref_table.lower() in kept_lower)) for t in tables]
        schema = Schema(self.schema.name, self.schema.dialect, tuple(tables))
        return Linked(schema, [self._names[i] for i in kept], by_name, question=question,
                      path_tables=[self._names[i] for i in path_only])

    def _narrow(self, i: int, col_scores: dict[int, float], wide: int, force=()) -> Table:
        t = self.schema.tables[i]
        keys = [ci for ci, c in enumerate(t.columns)
                if c.name.lower() in self._key_columns[i] or c.name.lower() in force]
        rest = sorted((ci for ci in range(len(t.columns)) if ci not in keys),
                      key=lambda ci: (-col_scores.get(ci, 0.0), ci))
        chosen = set(keys) | set(rest[:max(0, wide - len(keys))])
        return Table(t.name, tuple(c for ci, c in enumerate(t.columns) if ci in chosen), t.comment, t.foreign_keys)


def _documents(schema: Schema, extra: dict[str, str]) -> tuple[list[list[str]], list[list[str]]]:
    lower_extra = {k.lower(): v for k, v in extra.items()}
    table_docs, column_docs = [], []
    for t in schema.tables:
        name = words(t.name)
        tdoc = name * 2 + words(t.comment) + words(lower_extra.get(t.name.lower(), ""))
        for c in t.columns:
            cname = words(c.name)
            note = lower_extra.get(f"{t.name.lower()}.{c.name.lower()}", "")
            tdoc += cname + words(c.comment)
            cdoc = (cname * 2 + name + words(c.comment) + words(note)
                    + [w for v in c.samples for w in words(v)])
            if c.primary_key:
                cdoc.append("key")
            column_docs.append(_with_prefixes(cdoc))
        table_docs.append(_with_prefixes(tdoc))
    return table_docs, column_docs


_MATCHED = 0.01  # scores below this come from the connectivity prior alone: the table matched no word

_memory: "OrderedDict[str, SchemaIndex]" = OrderedDict()
_memory_lock = threading.Lock()
_MEMORY_SLOTS = 16


def _cache_path(settings, key: str) -> Path | None:
    cache_dir = getattr(settings, "cache_dir", None) if settings is not None else None
    return Path(cache_dir).expanduser() / "linking" / f"{key}.json" if cache_dir else None


def clear_memory_cache() -> None:
    """Forget the in-memory indexes (the disk cache stays)."""
    with _memory_lock:
        _memory.clear()


__all__ = ["SchemaIndex", "Linked", "words", "clear_memory_cache"]
