"""Structural slips in the model's SQL that the question and the schema show to be slips, rewritten.

A 270M model writes the right shape of query but often one of three things the analyst never asked for:

  - **a year as a text pattern on a date column**: `order_date LIKE '2025%'` (no such operator on a DATE in
    DuckDB or PostgreSQL), `opened_date > '2016%'` (a pattern where no pattern applies), `order_date LIKE
    '2023-01-01'` for "in 2023". Each becomes the range of dates it stands for (`year_ranges`);
  - **a join to a table the question never names**, used by nothing but its own ON condition ("the total floor
    space of stores in the West" written `FROM orders JOIN stores ...`, which sums each store once per order).
    The join is dropped (`unasked_joins`);
  - **an id where the question asks which thing**: "Which products cost more than 1000 dollars?" answered with
    `SELECT product_id`. When the question never asks for an id and the table has one name column, the query
    answers with the name (`names_for_ids`).

Each rewrite applies only where the SQL as written cannot be what the question asked, and each is measured on
Spider's training queries in tests/test_rewrite.py (how often it would change a right query) as well as on the
demo warehouse (README, "Value linking and rewrites"). They work on validated SQL; the guarded executor checks
the result again. Nothing here is specific to one database: it reads the schema's types, keys and names.

>>> from nl2sql.schema import Schema, Table, Column
>>> s = Schema("x", "duckdb", (Table("orders", (Column("id", "INTEGER", True), Column("day", "DATE"))),))
>>> year_ranges("SELECT COUNT(*) FROM orders WHERE day LIKE '2025%'", "duckdb", s)
"SELECT COUNT(*) FROM orders WHERE (day >= '2025-01-01' AND day < '2026-01-01')"
"""
from __future__ import annotations

import re

from .config import REWRITES   # NL2SQL_REWRITES names some of these; all by default
from .linking import words
from .prompt import short_type


def rewrite(sql: str, dialect: str, schema, question: str, *, named_tables=(), term_columns=(),
            only=REWRITES) -> str:
    """Every rewrite in `only`, in order. `named_tables`: tables the question names through a value or a glossary
    entry (they count as asked for, like the table's own name in the question); `term_columns`: (table, column)
    of the glossary terms the question mentions that stand for one column ("list price" = products.unit_price)."""
    if "years" in only:
        sql = year_ranges(sql, dialect, schema, question)
    if "dates" in only:
        sql = year_filters(sql, dialect, schema, question)
    if "terms" in only:
        sql = glossary_columns(sql, dialect, schema, term_columns)
    if "joins" in only:
        sql = unasked_joins(sql, dialect, schema, question, named_tables)
    if "names" in only:
        sql = names_for_ids(sql, dialect, schema, question)
    return sql


def _parse(sql: str, dialect: str):
    import sqlglot
    try:
        return sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return None


def _scopes(tree):
    """(scope, {alias: table name}) for each SELECT scope of the tree; table names and aliases lower-case."""
    from sqlglot import exp
    from sqlglot.optimizer.scope import traverse_scope
    try:
        scopes = traverse_scope(tree)
    except Exception:   # sqlglot cannot scope it (odd but valid SQL): leave it alone
        return []
    return [(s, {a.lower(): src.name.lower() for a, src in s.sources.items() if isinstance(src, exp.Table)})
            for s in scopes]


def ident(name: str):
    """An identifier node for a name from the schema: bare when plain lower-case, else quoted (a keyword, a space,
    capitals that PostgreSQL would fold)."""
    from sqlglot import exp

    from .prompt import is_plain_name
    return exp.to_identifier(name, quoted=not (re.fullmatch(r"[a-z_][a-z0-9_]*", name) and is_plain_name(name)))


def source_ident(scope, alias: str):
    """A copy of the identifier a query uses for the source `alias` (lower-case) of a scope, quoted as written."""
    from sqlglot import exp
    for name, src in scope.sources.items():
        if name.lower() == alias and isinstance(src, exp.Table):
            node = src.args.get("alias")
            return (node.this if node is not None else src.this).copy()
    return exp.to_identifier(alias)


def column_of(name: str, qualifier=None):
    """table.column as a node: `name` from the schema, `qualifier` an identifier node (or None)."""
    from sqlglot import exp
    return exp.Column(this=ident(name), table=qualifier)


def _owner(col, tables: dict, columns_of: dict) -> str | None:
    """The alias a column belongs to: its qualifier, else the one table in scope that has such a column."""
    if col.table:
        return col.table.lower() if col.table.lower() in tables else None
    owners = [a for a, t in tables.items() if col.name.lower() in columns_of.get(t, ())]
    return owners[0] if len(owners) == 1 else None


# --- a year as a pattern on a date column --------------------------------------------------------------------
_YEAR_PATTERN = re.compile(r"%?(1[89]\d\d|20\d\d)%?")
_FULL_DATE = re.compile(r"(1[89]\d\d|20\d\d)-\d\d-\d\d")
_MONTHS = re.compile(r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b|\d{1,2}(st|nd|rd|th)\b|"
                     r"\b(q[1-4]|quarter|month|week|day|today|yesterday)\b", re.I)


def year_ranges(sql: str, dialect: str, schema, question: str = "") -> str:
    """A year written as a text pattern against a date or time column becomes the dates it means:
    `d LIKE '2025%'` and `d = '2025'` -> 2025-01-01 <= d < 2026-01-01; `d > '2016%'` -> d >= '2017-01-01';
    `d LIKE '2023-01-01'` (a date where a pattern was meant) -> the year, when the question names that year and
    no month, day or quarter. Columns of text type are left alone (there a pattern may be meant, and a year may
    be stored on its own)."""
    from sqlglot import exp
    tree = _parse(sql, dialect)
    if tree is None:
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    types = {(t.name.lower(), c.name.lower()): short_type(c.type) for t in schema.tables for c in t.columns}
    only_year = set(re.findall(r"\b(1[89]\d\d|20\d\d)\b", question or "")) if not _MONTHS.search(question or "") else set()
    changed = False
    for scope, tables in _scopes(tree):
        for node in list(scope.expression.find_all(exp.Like, exp.EQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            col, lit = node.this, node.expression
            if not (isinstance(col, exp.Column) and isinstance(lit, exp.Literal) and lit.is_string):
                continue
            alias = _owner(col, tables, columns_of)
            if alias is None or types.get((tables[alias], col.name.lower())) != "time":
                continue
            text, year = lit.this, None
            m = _YEAR_PATTERN.fullmatch(text)
            if m and ("%" in text or not isinstance(node, exp.Like)):
                year = int(m.group(1))
            elif (isinstance(node, exp.Like) and _FULL_DATE.fullmatch(text) and text[:4] in only_year
                  and len(only_year) == 1):
                year = int(text[:4])
            if year is None:
                continue
            first, after = exp.Literal.string(f"{year}-01-01"), exp.Literal.string(f"{year + 1}-01-01")
            if isinstance(node, (exp.Like, exp.EQ)):
                new = exp.paren(exp.and_(exp.GTE(this=col.copy(), expression=first),
                                         exp.LT(this=col.copy(), expression=after)), copy=False)
            elif isinstance(node, exp.GT):
                new = exp.GTE(this=col.copy(), expression=after)
            elif isinstance(node, exp.GTE):
                new = exp.GTE(this=col.copy(), expression=first)
            elif isinstance(node, exp.LT):
                new = exp.LT(this=col.copy(), expression=first)
            else:
                new = exp.LT(this=col.copy(), expression=after)
            node.replace(new)
            changed = True
    return tree.sql(dialect=dialect) if changed else sql


# --- a year the question names and the SQL never filters --------------------------------------------------------
_RELATIVE = re.compile(r"\b(previous|prior|before|earlier|preceding|last|next|following|since|until|after|"
                       r"compared|versus|vs|between|born|age|old)\b", re.I)


def asked_year(question: str) -> int | None:
    """The one year a question names, when it names exactly one and no relative or comparing word ("since 2020",
    "born in 1990": a year that is not the range of the rows asked about). "Each month of 2023" names 2023."""
    years = set(re.findall(r"\b(1[89]\d\d|20\d\d)\b", question or ""))
    if len(years) != 1 or _RELATIVE.search(question):
        return None
    return int(years.pop())


def year_filters(sql: str, dialect: str, schema, question: str) -> str:
    """The question names a year ("How many returns were made in 2023?") and the query filters no date: keep the
    rows of that year, on the one date column within reach. A comparison of that year with a column that holds no
    date (`quantity > 2023`, copied from the question) becomes the date range of its table's date column; with a
    column no table in scope has (`year = 2024`, `month = '2023'`: reaching for a year column this schema lacks) it
    becomes the range on the date within reach, as a missing filter does: the one date column of the tables the
    query reads, else of the one table they reference by a foreign key that has one (joined); a number column named
    like 'year' of a table read (a calendar's) takes the year itself. A query with a date or year comparison already, or two candidate date columns, stays as it is. Runs before validation too, so a
    query that names a missing year column still gets its answer."""
    from sqlglot import exp
    year = asked_year(question)
    tree = _parse(sql, dialect) if year else None
    if not isinstance(tree, exp.Select):
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    types = {(t.name.lower(), c.name.lower()): short_type(c.type) for t in schema.tables for c in t.columns}
    scopes = _scopes(tree)
    if not scopes:
        return sql
    for scope, tables in scopes:   # a date or a year column already compared with something: not this case
        for col in scope.columns:
            alias = _owner(col, tables, columns_of)
            kind = types.get((tables[alias], col.name.lower())) if alias is not None else None
            if ((kind == "time" or (kind and "year" in words(col.name))) and col.find_ancestor(exp.Predicate)
                    and not col.find_ancestor(exp.Join)):   # a join on a date is no filter of one
                return sql
    root, tables = scopes[-1]
    select = root.expression
    if len(set(tables.values())) != len(tables):
        return sql

    def dates_of(table: str) -> list[str]:
        return [c for (t, c), kind in types.items() if t == table and kind == "time"]

    def year_range(column):
        return exp.paren(exp.and_(exp.GTE(this=column.copy(), expression=exp.Literal.string(f"{year}-01-01")),
                                  exp.LT(this=column.copy(), expression=exp.Literal.string(f"{year + 1}-01-01"))),
                         copy=False)

    copied = [n for n in tree.find_all(exp.EQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
              if isinstance(n.expression, exp.Literal) and n.expression.this == str(year)
              and isinstance(n.this, exp.Column)]
    target = None   # the comparison the range replaces; None: the range is added to the WHERE
    if copied:
        if len(copied) != 1 or copied[0].find_ancestor(exp.Select) is not select:
            return sql
        target, col = copied[0], copied[0].this
        alias = _owner(col, tables, columns_of)
        if alias is not None:   # a column of a table in scope that holds no date: that table's date
            dates = dates_of(tables[alias])
            if len(dates) != 1:
                return sql
            qualifier = col.args["table"].copy() if col.args.get("table") else None
            target.replace(year_range(column_of(_spelled(schema, tables[alias], dates[0]), qualifier)))
            return tree.sql(dialect=dialect)
        if col.table.lower() in tables or any(col.name.lower() in columns_of.get(t, ()) for t in tables.values()):
            return sql   # a real column whose table is ambiguous here: not a reach for a missing year column
    elif str(year) in sql:
        return sql

    def place(condition):
        if target is not None:
            target.replace(condition)
        else:
            select.where(condition, copy=False)
        return tree.sql(dialect=dialect)

    years = [(a, c) for a, t in tables.items() for (u, c), kind in types.items()
             if u == t and kind == "number" and "year" in words(c)]
    if len(years) == 1:   # a year column of a table read (a calendar's): the year itself
        alias, column = years[0]
        qualifier = source_ident(root, alias) if (len(tables) > 1 or _qualified(select)) else None
        return place(exp.EQ(this=column_of(_spelled(schema, tables[alias], column), qualifier),
                            expression=exp.Literal.number(year)))
    within = [(a, c) for a, t in tables.items() for c in dates_of(t)]
    if len(within) == 1:
        alias, column = within[0]
        qualifier = source_ident(root, alias) if (len(tables) > 1 or _qualified(select)) else None
        return place(year_range(column_of(_spelled(schema, tables[alias], column), qualifier)))
    if within:
        return sql
    reach = []   # (alias in scope, its column, the referenced table, its column) of tables with one date column
    for alias, table in tables.items():
        t = schema.table(table)
        for fk in (t.foreign_keys if t else ()):
            if fk.ref_table.lower() not in tables.values() and len(dates_of(fk.ref_table.lower())) == 1:
                reach.append((alias, fk.column, fk.ref_table, fk.ref_column))
    if len(reach) != 1:
        return sql
    alias, mine, table, theirs = reach[0]
    ref = schema.table(table)
    here = source_ident(root, alias)
    bare = len(tables) == 1 and not _qualified(select)
    new_alias = next(f"d{i}" for i in range(1, 99) if f"d{i}" not in tables)
    join_source(select, ref.name, new_alias, on=exp.EQ(this=column_of(_spelled(schema, tables[alias], mine), here),
                                                      expression=column_of(_spelled(schema, ref.name, theirs),
                                                                           exp.to_identifier(new_alias))))
    if bare:   # the query's own columns were bare: qualify them now that two tables are in scope
        for col in select.find_all(exp.Column):
            if not col.table and col.find_ancestor(exp.Select) is select and col is not (target and target.this):
                col.set("table", here.copy())
    return place(year_range(column_of(_spelled(schema, ref.name, dates_of(table.lower())[0]),
                                      exp.to_identifier(new_alias))))


def join_source(select, table: str, alias: str, on) -> None:
    """Add `JOIN table AS alias ON on` to a SELECT (table as the schema spells it; alias a plain new name)."""
    from sqlglot import exp
    select.join(exp.Table(this=ident(table), alias=exp.TableAlias(this=exp.to_identifier(alias))), on=on, copy=False)


def _qualified(select) -> bool:
    from sqlglot import exp
    return any(c.table for c in select.find_all(exp.Column))


def _spelled(schema, table: str, column: str) -> str:
    """A column's name as the schema spells it."""
    return schema.table(table).column(column).name


# --- a glossary term's column, where another table's column of that name was read -------------------------------
def glossary_columns(sql: str, dialect: str, schema, columns) -> str:
    """The question says a glossary term that stands for one column ("list price" = products.unit_price) and the
    query reads a column of that name from another table in scope (order_lines.unit_price, the price paid): read
    it from the term's table, when that table is in scope once. The join then often reads nothing and goes
    (`unasked_joins`)."""
    if not columns:
        return sql
    tree = _parse(sql, dialect)
    if tree is None:
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    wanted = {c.lower(): t.lower() for t, c in columns}
    changed = False
    for scope, tables in _scopes(tree):
        for col in scope.columns:
            home = wanted.get(col.name.lower())
            alias = _owner(col, tables, columns_of) if home else None
            if alias is None or tables[alias] == home:
                continue
            theirs = [a for a, t in tables.items() if t == home]
            if len(theirs) == 1:
                col.set("table", source_ident(scope, theirs[0]))
                changed = True
    return tree.sql(dialect=dialect) if changed else sql


# --- a join to a table the question never names ---------------------------------------------------------------
STEM_CHARS = 5   # a question word and a schema word that start with this many letters alike name one thing


def _alike(a: str, b: str) -> bool:
    """'returned' ~ 'return', 'undergoing' ~ 'undergoes', 'vote' ~ 'votes'; 'order' !~ 'ordinal'."""
    if a == b or (min(len(a), len(b)) >= 4 and (a.startswith(b) or b.startswith(a))):
        return True
    return len(a) >= STEM_CHARS and len(b) >= STEM_CHARS and a[:STEM_CHARS] == b[:STEM_CHARS] and (
        a.startswith(b[:-2]) or b.startswith(a[:-2]))


def mentions_table(question: str, table: str, columns=()) -> bool:
    """Whether the question names the table, or one of the given columns (the columns it is joined on: "students
    with treasurer votes" names a join on Treasurer_Vote): one of their words, or a word that starts alike.

    >>> mentions_table("How many items were returned?", "returns"), mentions_table("Floor space?", "orders")
    (True, False)
    """
    asked = set(words(question))
    names = [w for name in (table, *columns) for w in words(name) if len(w) >= 3 and w != "id"]
    return any(_alike(w, q) for w in names for q in asked)


def unasked_joins(sql: str, dialect: str, schema, question: str, named_tables=()) -> str:
    """Drop an inner join to a table that nothing but its own ON condition reads and the question never names
    (by its name, a value of its, or a glossary entry on it). A self-join, an outer join, a star, and a table read
    anywhere else (another join, a subquery) keep the query as it is."""
    from sqlglot import exp
    tree = _parse(sql, dialect)
    if tree is None or not question:
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    named = {t.lower() for t in named_tables}
    changed = False
    for scope, tables in _scopes(tree):
        select = scope.expression
        joins = select.args.get("joins") or []
        if not isinstance(select, exp.Select) or not joins or len(set(tables.values())) != len(tables):
            continue
        # counting rows per group, or all rows: the join is what is counted, unless it pairs no key with its
        # foreign key (products.product_id = orders.order_id: rows that match by accident, counted for nothing)
        counting = bool(select.args.get("group")) or any(isinstance(c.this, exp.Star) for c in select.find_all(exp.Count))
        if any(isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
               for e in select.expressions):
            continue
        for j, join in enumerate(joins):
            on = join.args.get("on")
            if on is None or join.side or join.kind not in ("", "INNER") or not isinstance(join.this, exp.Table):
                continue
            on_aliases = {_owner(c, tables, columns_of) for c in on.find_all(exp.Column)}
            if None in on_aliases or len(on_aliases) != 2:
                continue
            if counting and _keyed(on, tables, columns_of, schema):
                continue
            from_alias = _alias(select.args["from_"].this)
            joined = _alias(join.this)
            # the joined table, or (through the first join only) the FROM table, may be the one nobody reads
            for alias in ([joined] + ([from_alias] if j == 0 else [])):
                on_columns = [c.name for c in on.find_all(exp.Column)   # not keys: 'store_id' names the other side
                              if _owner(c, tables, columns_of) == alias and words(c.name)[-1:] != ["id"]]
                if (alias not in on_aliases or tables.get(alias) in named
                        or mentions_table(question, tables[alias], on_columns)):
                    continue
                if _read_elsewhere(tree, on, alias, tables, columns_of):
                    continue
                if alias == from_alias:
                    select.args["from_"].set("this", join.this)
                join.pop()
                changed = True
                break
            if changed:
                break   # one join per query: the scopes are stale once the tree changed
    return tree.sql(dialect=dialect) if changed else sql


def _keyed(on, tables: dict, columns_of: dict, schema) -> bool:
    """Whether a join condition pairs columns a foreign key links, or two columns of one name (a key by
    convention), or is anything but one plain equality."""
    from sqlglot import exp
    if not isinstance(on, exp.EQ) or not all(isinstance(x, exp.Column) for x in (on.this, on.expression)):
        return True
    a, b = on.this, on.expression
    ta, tb = tables[_owner(a, tables, columns_of)], tables[_owner(b, tables, columns_of)]
    if a.name.lower() == b.name.lower():
        return True
    links = {(t.name.lower(), fk.column.lower(), fk.ref_table.lower(), fk.ref_column.lower())
             for t in schema.tables for fk in t.foreign_keys}
    return ((ta, a.name.lower(), tb, b.name.lower()) in links) or ((tb, b.name.lower(), ta, a.name.lower()) in links)


def _alias(table) -> str:
    return (table.alias_or_name or "").lower()


def _read_elsewhere(tree, on, alias: str, tables: dict, columns_of: dict) -> bool:
    """Whether any column outside `on` may belong to `alias` (qualified by it, or unqualified and its table has
    such a column): then the table is read and stays."""
    from sqlglot import exp
    inside = {id(c) for c in on.find_all(exp.Column)}
    table = tables[alias]
    for col in tree.find_all(exp.Column):
        if id(col) in inside:
            continue
        if col.table:
            if col.table.lower() == alias:
                return True
        elif col.name.lower() in columns_of.get(table, ()):
            return True
    return False


# --- an id where the question asks which thing -----------------------------------------------------------------
_ASKS_FOR_ID = re.compile(r"\b(ids?|identifiers?|numbers?|codes?|keys?)\b", re.I)


def label_columns(table) -> list[str]:
    """The columns that name a row of `table`: its one name column ('name', 'title', 'product_name'), or a first
    and a last name; [] if none or several others."""
    found = [c.name for c in table.columns if not c.primary_key and short_type(c.type) == "text"
             and ({"name", "title"} & set(words(c.name)))]
    if len(found) == 2 and sorted(w for name in found for w in words(name) if w in ("first", "last")) == ["first", "last"]:
        return sorted(found, key=lambda n: "last" in words(n))   # first name, then last name
    return found if len(found) == 1 else []


def names_for_ids(sql: str, dialect: str, schema, question: str) -> str:
    """`SELECT t.x_id FROM ...` -> `SELECT t.x_name FROM ...` when the query returns nothing but the key of a
    table that has one name column (or a first and a last name: both are returned), and the question never asks
    for an id, number, code or key. Only the outermost SELECT (a key in a subquery is how rows are matched), without GROUP BY or set operations."""
    from sqlglot import exp
    if not question or _ASKS_FOR_ID.search(question):
        return sql
    tree = _parse(sql, dialect)
    if not isinstance(tree, exp.Select) or tree.args.get("group") or len(tree.expressions) != 1:
        return sql
    col = tree.expressions[0]
    if not isinstance(col, exp.Column) or isinstance(col.this, exp.Star):
        return sql
    columns_of = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    scopes = _scopes(tree)
    if not scopes:
        return sql
    tables = scopes[-1][1]   # the root scope comes last
    alias = _owner(col, tables, columns_of)
    table = schema.table(tables[alias]) if alias else None
    if table is None:
        return sql
    column = table.column(col.name)
    if column is None or not _is_key(column, table):
        return sql
    labels = label_columns(table)
    if not labels:
        return sql
    qualifier = col.args.get("table")
    tree.set("expressions", [column_of(name, qualifier.copy() if qualifier else None) for name in labels])
    return tree.sql(dialect=dialect)


def _is_key(column, table) -> bool:
    """The table's own surrogate key: named id or <table>_id, or a numeric primary key (a primary key that is a
    name, as in many Spider tables, is already what the question wants)."""
    ws = words(column.name)
    if ws == ["id"] or (ws[-1:] == ["id"] and ws[:-1] == words(table.name)[-len(ws) + 1:]):
        return True
    return column.primary_key and short_type(column.type) == "number"
