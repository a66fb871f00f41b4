"""Schema introspection: what tables, columns, keys, comments and sample values a database has.

The result is plain data (`Schema`), cached per database, and rendered for the model by `prompt.py`.

>>> s = Schema("x", "sqlite", (Table("singer", (Column("id", "INTEGER", primary_key=True), Column("name", "TEXT"))),))
>>> s.table("SINGER").column("Name").name
'name'
"""
from __future__ import annotations

import hashlib
import json
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


def introspect(warehouse, *, sample_values: int = 3) -> Schema:
    """Read tables, columns, keys, comments and a few distinct text values from a live database."""
    tables = warehouse.describe_tables()
    if not tables:
        raise SchemaError(
            f"The database {warehouse.display_name} has no tables I can read.",
            hint="Point --db at a database that has tables, or check that the user may see them.",
        )
    if sample_values > 0:
        tables = tuple(_with_samples(warehouse, t, sample_values) for t in tables)
    return Schema(warehouse.display_name, warehouse.dialect, tuple(tables))


_TEXT_TYPES = ("CHAR", "TEXT", "STRING", "VARCHAR", "CLOB", "ENUM")


def _with_samples(warehouse, table: Table, n: int) -> Table:
    cols = []
    for c in table.columns:
        if any(k in c.type.upper() for k in _TEXT_TYPES) or c.type == "":
            try:
                values = warehouse.sample_values(table.name, c.name, n)
            except Exception:  # a column we cannot sample is still a column
                values = ()
            c = Column(c.name, c.type, c.primary_key, c.comment, tuple(values))
        cols.append(c)
    return Table(table.name, tuple(cols), table.comment, table.foreign_keys)
