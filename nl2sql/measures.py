"""A glossary's metrics as columns the model can name, expanded to their definition before validation.

A small model does not compose `SUM(order_lines.quantity * order_lines.unit_price * (1 - order_lines.discount))`
from a definition in its prompt, but it does pick a column whose name the question says. So each glossary
metric (and each term) that is an expression over one table's rows becomes a *measure column* of that table in
the schema the model sees, the way a semantic layer (Cube's measures, dbt's metrics) exposes it:

    order_lines(..., revenue number "= quantity * unit_price * (1 - discount), where orders.status = 'completed'")

The model writes `SUM(T1.revenue)`; before validation `expand` puts the definition in its place, with the alias
the query uses, and adds the metric's filter to that query (joining the filter's table on the foreign key when the
query does not read it). The warehouse never sees a measure column, and the validator checks the expanded SQL like
any other. What becomes a measure:

  - a metric `AGG(expr)` (SUM, AVG, MIN, MAX) whose expr reads one table: the measure is expr (the model adds
    the aggregate it wants: total, average, per group);
  - a term whose SQL is an arithmetic expression over one table ("margin" = unit_price - unit_cost).

A plain column ("list price" = products.unit_price) or a condition ("weekend" = calendar.is_weekend = TRUE) is
already something the model can write; it stays a glossary line only.

>>> from nl2sql.schema import Schema, Table, Column
>>> from nl2sql.glossary import parse_glossary
>>> s = Schema("x", "sqlite", (Table("sales", (Column("qty", "INTEGER"), Column("price", "REAL"))),))
>>> g = parse_glossary("metrics:\\n  - name: revenue\\n    sql: SUM(sales.qty * sales.price)\\n", s)
>>> ms = measures_of(g, s)
>>> [(m.table, m.column, m.sql) for m in ms]
[('sales', 'revenue', 'qty * price')]
>>> expand("SELECT SUM(T1.revenue) FROM sales AS T1", ms, s)
'SELECT SUM((T1.qty * T1.price)) FROM sales AS T1'
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .prompt import SQL_DIALECT
from .rewrite import column_of, join_source, source_ident
from .schema import Column, Schema

MAX_MEASURES = 40   # measure columns added to the schema the model sees (a glossary is small; this caps the prompt)
_AGGREGATES = ("Sum", "Avg", "Min", "Max")


@dataclass(frozen=True)
class Measure:
    table: str        # the table whose rows it is computed over, as the schema spells it
    column: str       # the name the model writes (from the glossary name: 'units sold' -> units_sold)
    sql: str          # the row-level expression, columns unqualified ("qty * price")
    filter: str = ""  # a condition that goes with the metric, as the glossary writes it (table.column ...)
    name: str = ""    # the glossary entry's name


def column_name(name: str) -> str:
    """A glossary name as a column name: 'units sold' -> 'units_sold', 'Revenue (net)' -> 'revenue_net'."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def measures_of(glossary, schema: Schema) -> tuple[Measure, ...]:
    """The glossary's metrics and terms that are expressions over one table's rows, as measure columns. A name
    that is already a column of its table, or a second measure of that name, is skipped. Kept on the glossary per
    schema: every question asks, and parsing every entry each time grows with the glossary."""
    if not glossary:
        return ()
    key = schema.fingerprint()
    if key not in glossary._measures:
        glossary._measures[key] = _measures(glossary, schema)
    return glossary._measures[key]


def _measures(glossary, schema: Schema) -> tuple[Measure, ...]:
    import sqlglot
    from sqlglot import exp
    found: list[Measure] = []
    taken = {(t.name.lower(), c.name.lower()) for t in schema.tables for c in t.columns}
    for e in glossary.entries:
        if e.section not in ("metrics", "terms") or not e.sql:
            continue
        try:
            tree = sqlglot.parse_one(e.sql, read=SQL_DIALECT)
        except sqlglot.errors.SqlglotError:
            continue
        if e.section == "metrics":
            if type(tree).__name__ not in _AGGREGATES or isinstance(tree.this, exp.Distinct):
                continue
            inner = tree.this
        else:
            inner = tree
            if not isinstance(inner, (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren)):
                continue   # a column is nameable already; a condition is not a measure
        owners = {t.lower() for t, c in e.columns if _reads(inner, c)}
        if len(owners) != 1 or any(isinstance(n, (exp.AggFunc, exp.Select)) for n in inner.walk()):
            continue
        table = schema.table(next(iter(owners)))
        name = column_name(e.name)
        if table is None or not name or (table.name.lower(), name) in taken:
            continue
        taken.add((table.name.lower(), name))
        bare = inner.copy()
        for col in bare.find_all(exp.Column):
            col.set("table", None)
        found.append(Measure(table.name, name, bare.sql(dialect=SQL_DIALECT), e.filter, e.name))
        if len(found) == MAX_MEASURES:
            break
    return tuple(found)


def term_columns(entries) -> tuple[tuple[str, str], ...]:
    """(table, column) of the given glossary terms that stand for one column ("list price" = products.unit_price):
    the rewrite of nl2sql/rewrite.py `glossary_columns` reads that column from that table."""
    import sqlglot
    from sqlglot import exp
    found = []
    for e in entries:
        if e.section != "terms" or len(e.columns) != 1:
            continue
        try:
            if isinstance(sqlglot.parse_one(e.sql, read=SQL_DIALECT), exp.Column):
                found.append(e.columns[0])
        except sqlglot.errors.SqlglotError:
            continue
    return tuple(found)


def _reads(tree, column: str) -> bool:
    from sqlglot import exp
    return any(c.name.lower() == column.lower() for c in tree.find_all(exp.Column))


def with_measures(schema: Schema, measures) -> Schema:
    """The schema the model sees: each table that has measures gets them as extra number columns, their
    definition as the comment."""
    if not measures:
        return schema
    by_table: dict[str, list[Measure]] = {}
    for m in measures:
        by_table.setdefault(m.table.lower(), []).append(m)
    tables = []
    for t in schema.tables:
        extra = tuple(Column(m.column, "DECIMAL", comment=_comment(m)) for m in by_table.get(t.name.lower(), ()))
        tables.append(t if not extra else type(t)(t.name, t.columns + extra, t.comment, t.foreign_keys))
    return Schema(schema.name, schema.dialect, tuple(tables))


def _comment(m: Measure) -> str:
    return f"= {m.sql}" + (f", where {m.filter}" if m.filter else "")


def expand(sql: str, measures, schema: Schema, dialect: str = SQL_DIALECT) -> str:
    """Put each measure column's definition where the query names it (qualified by the alias it used), and add
    its metric's filter to that query once. SQL that names no measure comes back unchanged."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope
    if not measures:
        return sql
    names = {m.column for m in measures}
    if not any(n in sql.lower() for n in names):
        return sql
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
        scopes = traverse_scope(tree)
    except Exception:   # the validator reports what is wrong with it
        return sql
    by_key = {(m.table.lower(), m.column): m for m in measures}
    real = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    changed = False
    for scope in scopes:
        tables = {a.lower(): s.name.lower() for a, s in scope.sources.items() if isinstance(s, exp.Table)}
        used: list[tuple[Measure, str]] = []
        for col in list(scope.columns):
            name = col.name.lower()
            if name not in names:
                continue
            if col.table:
                alias = col.table.lower()
                owners = [alias] if (tables.get(alias), name) in by_key else []
            else:
                owners = [a for a, t in tables.items() if (t, name) in by_key and name not in real.get(t, ())]
            if len(owners) != 1 or name in real.get(tables[owners[0]], ()):
                continue
            alias = owners[0]
            m = by_key[(tables[alias], name)]
            qualifier = col.args["table"] if col.args.get("table") else source_ident(scope, alias)
            definition = sqlglot.parse_one(m.sql, read=SQL_DIALECT)
            for c in definition.find_all(exp.Column):
                c.set("table", qualifier.copy())
            col.replace(exp.paren(definition, copy=False))
            used.append((m, alias))
            changed = True
        for m in {m.name: m for m, _ in used if m.filter}.values():
            _add_filter(scope, tables, m, schema, dict(used)[m])
    return tree.sql(dialect=dialect) if changed else sql


def _add_filter(scope, tables: dict, m: Measure, schema: Schema, alias: str) -> None:
    """AND the metric's filter into the scope's WHERE, on the alias of the filter's table; join that table on the
    foreign key from the measure's table when the query does not read it. No key, no filter (left as written)."""
    import sqlglot
    from sqlglot import exp
    select = scope.expression
    if not isinstance(select, exp.Select):
        return
    condition = sqlglot.parse_one(m.filter, read=SQL_DIALECT)
    needed = {c.table.lower() for c in condition.find_all(exp.Column) if c.table}
    aliases = {}
    for table in needed:
        here = [a for a, t in tables.items() if t == table]
        if len(here) > 1:
            return   # the table twice in scope: which one the filter means is not known
        if here:
            aliases[table] = source_ident(scope, here[0])
            continue
        on = _key_between(schema, m.table, table)
        if on is None:
            return
        mine, theirs = on
        new_alias = next(f"f{i}" for i in range(1, 99) if f"f{i}" not in tables)
        join_source(select, schema.table(table).name, new_alias,
                    on=exp.EQ(this=column_of(mine, source_ident(scope, alias)),
                              expression=column_of(theirs, exp.to_identifier(new_alias))))
        aliases[table] = exp.to_identifier(new_alias)
    for c in condition.find_all(exp.Column):
        if c.table:
            c.set("table", aliases[c.table.lower()].copy())
    select.where(condition, copy=False)


def _key_between(schema: Schema, a: str, b: str) -> tuple[str, str] | None:
    """(column of a, column of b) of a foreign key between tables a and b, either way round."""
    ta, tb = schema.table(a), schema.table(b)
    if ta is None or tb is None:
        return None
    for fk in ta.foreign_keys:
        if fk.ref_table.lower() == tb.name.lower():
            return fk.column, fk.ref_column
    for fk in tb.foreign_keys:
        if fk.ref_table.lower() == ta.name.lower():
            return fk.ref_column, fk.column
    return None
