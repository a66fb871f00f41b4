"""Schema introspection: what tables, columns, keys, comments and sample values a database has.

The result is plain data (`Schema`), cached per database, and rendered for the model by `prompt.py`.

>>> s = Schema("x", "sqlite", (Table("singer", (Column("id", "INTEGER", primary_key=True), Column("name", "TEXT"))),))
>>> s.table("SINGER").column("Name").name
'name'
"""
from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import asdict, dataclass, field

from .errors import SchemaError


@dataclass(frozen=True)
class Column:
    name: str
    type: str = ""
    primary_key: bool = False
    comment: str = ""
    samples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    comment: str = ""
    foreign_keys: tuple[ForeignKey, ...] = ()

    def column(self, name: str) -> Column | None:
        low = name.lower()
        return next((c for c in self.columns if c.name.lower() == low), None)


@dataclass(frozen=True)
class Schema:
    name: str
    dialect: str  # sqlglot dialect name of the warehouse
    tables: tuple[Table, ...] = field(default_factory=tuple)

    def table(self, name: str) -> Table | None:
        low = name.lower()
        return next((t for t in self.tables if t.name.lower() == low), None)

    @property
    def column_count(self) -> int:
        return sum(len(t.columns) for t in self.tables)

    def mapping(self) -> dict[str, dict[str, str]]:
        """{table: {column: type}} as sqlglot's optimizer wants it."""
        return {t.name: {c.name: (c.type or "TEXT") for c in t.columns} for t in self.tables}

    def fingerprint(self) -> str:
        """Stable hash of names and types (not samples): keys caches of grammars and prompts."""
        shape = [(t.name, [(c.name, c.type) for c in t.columns]) for t in self.tables]
        return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Schema":
        tables = tuple(
            Table(t["name"], tuple(Column(**{**c, "samples": tuple(c["samples"])}) for c in t["columns"]),
                  t.get("comment", ""), tuple(ForeignKey(**fk) for fk in t.get("foreign_keys", ())))
            for t in d["tables"])
        return cls(d["name"], d["dialect"], tables)


def from_spider(entry: dict) -> Schema:
    """A Schema from one entry of Spider's tables.json (no sample values: Spider ships none for train)."""
    names = entry["table_names_original"]
    cols = entry["column_names_original"]
    types = entry["column_types"]
    pks = set()
    for pk in entry["primary_keys"]:
        pks.update(pk if isinstance(pk, list) else [pk])
    by_table: dict[int, list[Column]] = {i: [] for i in range(len(names))}
    for idx, (ti, cname) in enumerate(cols):
        if ti < 0:
            continue
        by_table[ti].append(Column(cname, types[idx].upper(), idx in pks))
    fks: dict[int, list[ForeignKey]] = {i: [] for i in range(len(names))}
    for src, dst in entry["foreign_keys"]:
        ti, cname = cols[src]
        tj, rname = cols[dst]
        fks[ti].append(ForeignKey(cname, names[tj], rname))
    tables = tuple(Table(n, tuple(by_table[i]), "", tuple(fks[i])) for i, n in enumerate(names))
    return Schema(entry["db_id"], "sqlite", tables)


# Up to this many columns, introspect() samples every text column up front (what small schemas, e.g. Spider's,
# always got). Above it sampling waits for with_samples() on the tables schema linking keeps: one query per
# text column of a 1,000-table schema would take longer than everything else together.
EAGER_SAMPLE_COLUMNS = 150


def introspect(warehouse, *, sample_values: int = 3, eager_columns: int | None = EAGER_SAMPLE_COLUMNS) -> Schema:
    """Read tables, columns, keys and comments from a live database, and up to `sample_values` distinct values
    per text column when the schema has at most `eager_columns` columns (None: always; sample_values=0: never).
    A larger schema comes back without samples: add them to the tables you keep with `with_samples`."""
    tables = warehouse.describe_tables()
    if not tables:
        raise SchemaError(
            f"The database {warehouse.display_name} has no tables I can read.",
            hint="Point --db at a database that has tables, or check that the user may see them.",
        )
    schema = Schema(warehouse.display_name, warehouse.dialect, tuple(tables))
    if sample_values > 0 and (eager_columns is None or schema.column_count <= eager_columns):
        schema = with_samples(warehouse, schema, n=sample_values)
    return schema


def with_samples(warehouse, schema: Schema, tables=None, n: int = 3) -> Schema:
    """`schema` with up to `n` distinct sample values on the text columns of `tables` (names or Tables; None: all
    of the schema's tables). Other tables are returned as they are; a column that already has samples keeps
    them. Each (table, column) is read once per warehouse, so calling this per question costs queries only
    for tables not sampled before.

    >>> s = Schema("x", "sqlite", (Table("t", (Column("a", "TEXT", samples=("x",)),)),))
    >>> with_samples(None, s, ["t"]) == s
    True
    """
    if n <= 0:
        return schema
    wanted = None
    if tables is not None:
        wanted = set()
        for t in tables:
            name = t.name if isinstance(t, Table) else str(t)
            if schema.table(name) is None:
                raise SchemaError(f"The schema {schema.name} has no table {name!r} to sample.",
                                  hint="Pass names of tables in the schema (e.g. those schema linking kept).")
            wanted.add(name.lower())
    out = tuple(_with_samples(warehouse, t, n) if wanted is None or t.name.lower() in wanted else t
                for t in schema.tables)
    return Schema(schema.name, schema.dialect, out)


_TEXT_TYPES = ("CHAR", "TEXT", "STRING", "VARCHAR", "CLOB", "ENUM")
# SQLite columns declared without a type: SQLAlchemy reports them as NULL (NullType), DuckDB never has them.
_UNTYPED = ("", "NULL")
_sample_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def is_text_column(column: Column) -> bool:
    """Whether a column gets sample values: text types, and untyped SQLite columns (which hold anything).

    >>> [is_text_column(Column("c", t)) for t in ("VARCHAR(20)", "INTEGER", "", "NULL")]
    [True, False, True, True]
    """
    return column.type.upper() in _UNTYPED or any(k in column.type.upper() for k in _TEXT_TYPES)


def _with_samples(warehouse, table: Table, n: int) -> Table:
    try:
        cache = _sample_cache.setdefault(warehouse, {})
    except TypeError:  # not weak-referenceable: no memo
        cache = {}
    cols = []
    for c in table.columns:
        if not c.samples and is_text_column(c):
            key = (table.name, c.name, n)
            if key not in cache:
                try:
                    cache[key] = tuple(warehouse.sample_values(table.name, c.name, n))
                except Exception:  # a column we cannot sample is still a column (and is retried next time)
                    cols.append(c)
                    continue
            c = Column(c.name, c.type, c.primary_key, c.comment, cache[key])
        cols.append(c)
    return Table(table.name, tuple(cols), table.comment, table.foreign_keys)
