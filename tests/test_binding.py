"""nl2sql.binding.Binder: columns bound to the tables in scope, on partial SQL as the decoder writes it.

`check(text)` is None while `text` can still become a well-bound query, else the offset of the construct to
blame (the decoder backtracks there). Gold queries and every prefix of them must pass; a real column on the
wrong table must be refused at the right place; scopes follow SQL (nested, correlated, derived, set operations).
"""
from __future__ import annotations

import json

import pytest

from nl2sql.binding import Binder
from nl2sql.prompt import quote_name
from nl2sql.schema import Column, Schema, Table, from_spider

from conftest import SPIDER

ENTRIES = json.loads((SPIDER / "tables.json").read_text())
SPIDER_SCHEMAS = {e["db_id"]: from_spider(e) for e in ENTRIES}

# A small hand-made schema (tables like a pet-owner database, written here, not read from Spider's files).
SCHEMA = Schema("owners", "sqlite", (
    Table("pets", (Column("petid"), Column("pettype"), Column("weight"), Column("pet_age"))),
    Table("student", (Column("stuid"), Column("sex"), Column("name"), Column("age"), Column("order_id"))),
    Table("has_pet", (Column("stuid"), Column("petid"))),
    Table("orders", (Column("order_id"), Column("Home Town"), Column("group_id"), Column("placed"))),
    Table("order_items", (Column("order_id"), Column("qty"))),
    Table("groups", (Column("group_id"), Column("label"))),
))
B = Binder(SCHEMA)


def at(sql: str, word: str, nth: int = 0) -> int:
    """Offset of the nth occurrence of `word` in `sql` (what a check should blame)."""
    pos = -1
    for _ in range(nth + 1):
        pos = sql.index(word, pos + 1)
    return pos


def first_rejected_prefix(binder: Binder, sql: str):
    """(cut, offset) for the shortest prefix the binder refuses, or None."""
    for cut in range(1, len(sql)):
        verdict = binder.check(sql[:cut])
        if verdict is not None:
            return cut, verdict
    return None


# --- (a) gold queries -----------------------------------------------------------------------------------------

# Gold queries that are wrongly bound themselves (the binder is right to refuse them):
KNOWN_BAD_GOLD = {
    # T3 is used in the first ON, before `JOIN MEMBER_OF AS T3` declares it (SQLite >= 3.39 refuses it too).
    "SELECT T2.Lname FROM DEPARTMENT AS T1 JOIN FACULTY AS T2 ON T1.DNO  =  T3.DNO JOIN MEMBER_OF AS T3 ON "
    "T2.FacID  =  T3.FacID WHERE T1.DName  =  \"Computer Science\"",
    # Third_Party_Companies has no company_type_code column (the gold query fails on the database).
    "SELECT T1.company_name FROM Third_Party_Companies AS T1 JOIN Maintenance_Contracts AS T2 ON T1.company_id  =  "
    "T2.maintenance_contract_company_id JOIN Ref_Company_Types AS T3 ON T1.company_type_code  =  "
    "T3.company_type_code ORDER BY T2.contract_end_date DESC LIMIT 1",
}
BINDER_BUG_GOLD: set = set()  # gold queries the binder refuses by mistake (none known)


def test_gold_queries_and_all_their_prefixes_pass():
    gold = json.loads((SPIDER / "train_spider.json").read_text())[::5]   # 1,400 spread over all databases
    binders = {db: Binder(s) for db, s in SPIDER_SCHEMAS.items()}
    refused = []
    for g in gold:
        q, binder = g["query"], binders[g["db_id"]]
        if q in KNOWN_BAD_GOLD or q in BINDER_BUG_GOLD:
            continue
        verdict = binder.check(q, final=True)
        if verdict is not None:
            refused.append((g["db_id"], q, "final", q[verdict:verdict + 20]))
            continue
        cut = first_rejected_prefix(binder, q)
        if cut is not None:
            refused.append((g["db_id"], q, q[:cut[0]], q[cut[1]:cut[1] + 20]))
    assert refused == []


def test_known_bad_gold_is_refused():
    for q in KNOWN_BAD_GOLD:
        db = "college_3" if "FACULTY" in q else "assets_maintenance"
        assert Binder(SPIDER_SCHEMAS[db]).check(q, final=True) is not None


# --- (b) wrong-table columns, with the offset to blame ----------------------------------------------------------

WRONG = [
    # a qualified column after FROM: blame the column (complete, or a prefix no column of that table has)
    ("SELECT T1.weight FROM pets AS T1 WHERE T1.sex ", "sex"),
    ("SELECT T1.weight FROM pets AS T1 WHERE T1.sex = 'F'", "sex"),
    ("SELECT T1.weight FROM pets AS T1 WHERE T1.sex", "sex"),
    ("SELECT T1.weight FROM pets AS T1 WHERE T1.se", "se"),
    ("SELECT T1.weight FROM pets AS T1 WHERE T1.weight > 1 ORDER BY T1.na", "na"),
    ("SELECT T1.weight FROM pets AS T1 JOIN has_pet AS T2 ON T1.petid = T2.sex", "sex"),
    ("SELECT T2.name FROM pets AS T1 JOIN student AS T2 ON T1.petid = T2.petid", "petid"),
    # an alias (or a table) that no FROM of this query or an enclosing one declared
    ("SELECT T1.weight FROM pets AS T1 WHERE T2.weight > 1", "T2"),
    ("SELECT T1.weight FROM pets AS T1 WHERE student.age > 1", "student"),
    ("SELECT T1.weight FROM pets AS T1 WHERE T3", "T3"),
    # the SELECT list asked a column of an alias whose source lacks it: blame the source's table
    ("SELECT T1.sex FROM pets AS T1 ", "pets"),
    ("SELECT T1.sex FROM pets AS T1 WHERE", "pets"),
    ("SELECT T1.name, T2.sex FROM student AS T1 JOIN pets AS T2 ON", "pets"),
    ("SELECT T2.sex FROM student AS T1 JOIN pets AS T2 ", "pets"),
    ("SELECT pets.sex FROM pets WHERE", "pets"),
    # a bare column that no table in scope has
    ("SELECT petid FROM pets WHERE sex ", "sex"),
    ("SELECT petid FROM pets WHERE sex = 'F'", "sex"),
    ("SELECT petid FROM pets WHERE weight > 1 ORDER BY age", "age"),
    ("SELECT weight FROM pets AS T1 JOIN has_pet AS T2 ON T1.petid = T2.petid WHERE qty > 1", "qty"),
    # a bare column that two tables in scope have is ambiguous (SQLite, PostgreSQL, ... refuse it)
    ("SELECT petid FROM pets AS T1 JOIN has_pet AS T2 ON T1.petid = T2.petid WHERE", len("SELECT ")),
    ("SELECT sex FROM pets WHERE", "pets"),            # one table that lacks it: take another table
    ("SELECT petid FROM pets WHERE sx", "sx"),         # a bare prefix no column, keyword or alias starts with
]


@pytest.mark.parametrize("sql,blamed", WRONG)
def test_wrong_table_columns_are_refused_at_the_right_place(sql, blamed):
    """`blamed`: the word (its last occurrence) or the offset the check must point at, as a prefix and as the
    whole query."""
    want = blamed if isinstance(blamed, int) else sql.rindex(blamed)
    assert B.check(sql) == want
    assert B.check(sql, final=True) == want


@pytest.mark.parametrize("sql", [
    "SELECT T1.weight FROM pets AS T1 WHERE T1.we",        # a prefix of T1's weight
    "SELECT T1.weight FROM pets AS T1 WHERE T1.pet",       # of petid, pettype, pet_age
    "SELECT T1.weight FROM pets AS T1 WHERE T",            # T1, THEN, TRUE...
    "SELECT T1.weight FROM pets AS T1 WHERE T1",
    "SELECT T1.sex FROM pets AS T",                        # alias still being written
    "SELECT T1.sex FROM pets",                             # the table name may still grow (pets_archive)
    "SELECT T1.sex FROM student AS T1 JOIN pets AS T2",    # the binding is met by T1
    "SELECT sex FROM pets JOIN student ON",                # a second table that has sex
    "SELECT petid FROM pets WHERE weig",
    "SELECT petid FROM pets WHERE NO",
    "SELECT T1.name FROM student AS T1 WHERE T1.sex = 'F' AND T1.a",
])
def test_partial_sql_that_can_still_bind_is_not_refused(sql):
    assert B.check(sql) is None


# --- (c) scopes -------------------------------------------------------------------------------------------------

VALID = [
    # a nested query sees its own sources and correlated outer aliases and tables
    "SELECT name FROM student WHERE stuid IN (SELECT stuid FROM has_pet WHERE petid > 1)",
    "SELECT T1.name FROM student AS T1 WHERE EXISTS (SELECT * FROM has_pet AS T2 WHERE T2.stuid = T1.stuid)",
    "SELECT name FROM student WHERE EXISTS (SELECT * FROM has_pet WHERE has_pet.stuid = student.stuid)",
    "SELECT name FROM student WHERE age > (SELECT AVG(age) FROM student)",
    "SELECT T1.name FROM student AS T1 WHERE T1.stuid NOT IN (SELECT T2.stuid FROM has_pet AS T2 JOIN pets AS T3 "
    "ON T2.petid = T3.petid WHERE T3.weight > T1.age)",
    # derived tables accept any column
    "SELECT x.c FROM (SELECT COUNT(*) AS c FROM pets) AS x",
    "SELECT x.anything FROM (SELECT petid FROM pets) AS x WHERE x.whatever > 1 ORDER BY x.else_",
    "SELECT T1.name, x.n FROM student AS T1 JOIN (SELECT stuid, COUNT(*) AS n FROM has_pet GROUP BY stuid) AS x "
    "ON T1.stuid = x.stuid",
    # set operations start a fresh scope (T1 means another table on each side)
    "SELECT T1.sex FROM student AS T1 UNION SELECT T1.pettype FROM pets AS T1",
    "SELECT T1.sex FROM student AS T1 INTERSECT SELECT T1.sex FROM student AS T1 JOIN has_pet AS T2 "
    "ON T1.stuid = T2.stuid",
    "SELECT stuid FROM student EXCEPT SELECT stuid FROM has_pet",
    "(SELECT sex FROM student) UNION (SELECT pettype FROM pets)",
    "SELECT name FROM student WHERE stuid IN (SELECT stuid FROM has_pet INTERSECT SELECT stuid FROM student)",
    # output aliases in ORDER BY / HAVING / WHERE
    "SELECT pettype, COUNT(*) AS cnt FROM pets GROUP BY pettype ORDER BY cnt DESC",
    "SELECT COUNT(*) AS cnt FROM pets GROUP BY pettype HAVING cnt > 1 ORDER BY cnt",
    "SELECT weight * 2 AS w FROM pets WHERE w > 3",
    # SQLite reads a double-quoted word that names no column as a string
    'SELECT weight FROM pets WHERE pettype = "dog"',
    'SELECT name FROM student WHERE sex = "F" AND name LIKE "%a%"',
    'SELECT T2."Home Town" FROM student AS T1 JOIN orders AS T2 ON T1.order_id = T2.order_id',
    'SELECT "Home Town" FROM orders',
    # names in any case, aliases without AS, table names as qualifiers, all join forms
    "SELECT t1.SEX FROM Student AS t1",
    "SELECT T1.weight FROM pets T1 WHERE T1.weight > 1",
    "SELECT pets.weight FROM pets JOIN has_pet ON pets.petid = has_pet.petid",
    "SELECT weight FROM pets NATURAL JOIN has_pet",
    "SELECT T1.petid FROM pets AS T1 JOIN has_pet AS T2 ON T1.petid = T2.petid WHERE weight > 1",
    "SELECT T1.sex FROM student AS T1 LEFT OUTER JOIN has_pet AS T2 ON T1.stuid = T2.stuid WHERE T2.petid IS NULL",
    "SELECT T1.name FROM student AS T1, has_pet AS T2 WHERE T1.stuid = T2.stuid",
    # functions, CASE, CAST, BETWEEN, LIMIT/OFFSET: keywords and function names are not columns
    "SELECT sex, COUNT(*) FROM student GROUP BY sex HAVING COUNT (DISTINCT age) > 1",
    "SELECT CASE WHEN age > 20 THEN 'old' ELSE 'young' END FROM student",
    "SELECT CAST(weight AS REAL) FROM pets WHERE CAST(pet_age AS INT) > 1",
    "SELECT name FROM student WHERE age BETWEEN 1 AND 2 AND name NOT LIKE 'a%'",
    "SELECT weight FROM pets WHERE weight > 1 ORDER BY weight DESC NULLS LAST LIMIT 3 OFFSET 1",
    "SELECT strftime('%Y', placed), COUNT(*) FROM orders GROUP BY 1",
    # table names that start with keywords, complete
    "SELECT COUNT(*) FROM orders AS T1 JOIN order_items AS T2 ON T1.order_id = T2.order_id",
    "SELECT label FROM groups WHERE group_id > 1 ORDER BY label",
]


@pytest.mark.parametrize("sql", VALID)
def test_valid_scopes_pass_whole_and_at_every_prefix(sql):
    assert B.check(sql, final=True) is None
    assert first_rejected_prefix(B, sql) is None


SCOPE_ERRORS = [
    # a nested query's own alias: its columns are its table's
    ("SELECT stuid FROM student WHERE stuid IN (SELECT T2.stuid FROM has_pet AS T2 WHERE T2.sex = 'F')", "sex"),
    # a nested query's alias is gone once it closes
    ("SELECT T1.stuid FROM student AS T1 WHERE T1.stuid IN (SELECT T2.stuid FROM has_pet AS T2) AND T2.petid > 1",
     "T2.petid"),
    # a correlated reference needs an alias of an enclosing query
    ("SELECT stuid FROM student WHERE stuid NOT IN (SELECT stuid FROM has_pet WHERE T1.sex = 'F')", "T1"),
    # after a set operation the first query's aliases are gone
    ("SELECT T1.sex FROM student AS T1 EXCEPT SELECT stuid FROM has_pet WHERE T1.sex = 'F'", "T1.sex = "),
    ("SELECT T1.sex FROM student AS T1 INTERSECT SELECT T1.sex FROM pets AS T1 WHERE T1.weight > 1", "pets"),
    # a derived table hides the tables inside it
    ("SELECT x.c FROM (SELECT COUNT(*) AS c FROM pets AS T1) AS x WHERE T1.weight > 1", "T1.weight"),
    # a double-quoted name that IS a column binds like one
    ('SELECT weight FROM pets WHERE "sex" = \'F\'', '"sex"'),
]


@pytest.mark.parametrize("sql,blamed", SCOPE_ERRORS)
def test_scope_errors_are_refused_at_the_right_place(sql, blamed):
    assert B.check(sql, final=True) == at(sql, blamed)
    cut = first_rejected_prefix(B, sql)
    assert cut is not None and cut[1] == at(sql, blamed)


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) FROM order",            # orders, order_items being written
    "SELECT COUNT(*) FROM orders AS T1 JOIN order",
    "SELECT COUNT(*) FROM orders AS T1 JOIN order_",
    "SELECT label FROM group",               # groups
    "SELECT COUNT(*) FROM orders, group",
    "SELECT COUNT(*) FROM (SELECT order_id FROM order",
])
def test_a_table_name_that_starts_with_a_keyword_is_not_refused_early(sql):
    assert B.check(sql) is None


# --- binder bugs found by these tests (see /work/notes/decoding-tests.md for the proposed fixes) ---------------

@pytest.mark.parametrize("sql", [
    "SELECT T2.qty FROM student AS T1 JOIN orders AS T3 ON T1.order_id = T3.order_id JOIN order_items AS T2 "
    "ON T3.order_id = T2.order_id",
    "SELECT T3.qty FROM groups AS T1 JOIN orders AS T2 ON T1.group_id = T2.group_id JOIN order_items AS T3 "
    "ON T2.order_id = T3.order_id",
])
def test_a_column_that_starts_with_a_keyword_after_a_qualifier(sql):
    assert first_rejected_prefix(B, sql) is None


def test_a_correlated_subquery_in_the_select_list():
    sql = ("SELECT T1.name, (SELECT COUNT(*) FROM has_pet AS T2 WHERE T2.stuid = T1.stuid) FROM student AS T1 "
           "WHERE T1.age > 20")
    assert B.check(sql, final=True) is None
    assert first_rejected_prefix(B, sql) is None
    # ...and the outer FROM then checks what the subquery asked of T1: pets has no stuid
    wrong = "SELECT (SELECT COUNT(*) FROM has_pet AS T2 WHERE T2.stuid = T1.stuid) FROM pets AS T1 WHERE"
    assert B.check(wrong) == at(wrong, "pets")


def test_a_subquery_in_the_select_list_cannot_name_an_alias_no_query_declares():
    sql = "SELECT (SELECT COUNT(*) FROM has_pet AS T2 WHERE T2.stuid = T9.stuid) FROM student AS T1 WHERE"
    assert B.check(sql) == at(sql, "T9")


def test_natural_join_columns_are_not_ambiguous():
    assert B.check("SELECT petid FROM pets NATURAL JOIN has_pet WHERE petid > 1", final=True) is None


def test_a_correlated_subquery_in_the_select_list_still_binds_its_own_alias():
    sql = "SELECT (SELECT COUNT(*) FROM has_pet AS T2 WHERE T2.sex = 'F') FROM student AS T1"
    assert B.check(sql, final=True) == at(sql, "sex")


@pytest.mark.parametrize("sql", [
    "SELECT extract(YEAR FROM placed) FROM orders",
    "SELECT placed FROM orders WHERE extract(MONTH FROM placed) = 3",
    "SELECT placed FROM orders WHERE extract(QUARTER FROM placed) = 3",
])
def test_extract_date_part_is_not_a_column(sql):
    assert B.check(sql, final=True) is None
    assert first_rejected_prefix(B, sql) is None


@pytest.mark.parametrize("sql,blamed", [
    ("SELECT name FROM student AS T1 WHERE student.age > 1", "student.age"),
    ("SELECT student.name FROM student AS T1", "student.name"),
])
def test_an_aliased_table_is_known_by_its_alias_only(sql, blamed):
    assert B.check(sql, final=True) == at(sql, blamed)


def test_an_unaliased_table_is_known_by_its_name():
    assert B.check("SELECT student.name FROM student WHERE student.age > 1", final=True) is None


@pytest.mark.parametrize("sql", [
    "SELECT sex FROM student UNION SELECT pettype FROM pets ORDER BY sex",
    "SELECT T1.sex FROM student AS T1 EXCEPT SELECT pettype FROM pets ORDER BY sex",
])
def test_order_by_of_a_compound_query_names_its_output(sql):
    assert B.check(sql, final=True) is None
    assert first_rejected_prefix(B, sql) is None


def test_order_by_of_a_compound_query_still_refuses_other_names():
    sql = "SELECT sex FROM student UNION SELECT pettype FROM pets ORDER BY name"
    assert B.check(sql, final=True) == at(sql, "name")


# --- (d) every Spider schema, and a wide synthetic one ---------------------------------------------------------

def generic_cases(schema: Schema):
    """A valid query over the schema's first table, and the same with a column of another table that the
    first table lacks, in the SELECT list, WHERE (qualified) and WHERE (bare): (sql, None | blamed offset)."""
    table = schema.tables[0]
    t, c = quote_name(table.name), quote_name(table.columns[0].name)
    c2 = quote_name(table.columns[-1].name)
    own = {col.name.lower() for col in table.columns}
    foreign = next((col.name for other in schema.tables[1:] for col in other.columns if col.name.lower() not in own),
                   None)
    cases = [(f"SELECT T1.{c}, COUNT(*) FROM {t} AS T1 WHERE T1.{c2} IS NOT NULL GROUP BY T1.{c} "
              f"ORDER BY COUNT(*) DESC LIMIT 3", None),
             (f"SELECT {c} FROM {t} WHERE {c2} IN (SELECT {c2} FROM {t} AS T9 WHERE T9.{c} = 1)", None)]
    if foreign is not None:
        f = quote_name(foreign)
        cases += [(f"SELECT T1.{f} FROM {t} AS T1", len(f"SELECT T1.{f} FROM ")),
                  (f"SELECT T1.{c} FROM {t} AS T1 WHERE T1.{f} = 1", len(f"SELECT T1.{c} FROM {t} AS T1 WHERE T1.")),
                  (f"SELECT {c} FROM {t} WHERE {f} = 1", len(f"SELECT {c} FROM {t} WHERE "))]
    return cases


def test_every_spider_schema_binds_its_own_columns_and_refuses_others():
    problems, refused = [], 0
    for db, schema in SPIDER_SCHEMAS.items():
        binder = Binder(schema)
        for sql, want in generic_cases(schema):
            got = binder.check(sql, final=True)
            refused += want is not None
            if got != want:
                problems.append((db, sql, got, want))
            elif want is None and first_rejected_prefix(binder, sql) is not None:
                problems.append((db, sql, "prefix", first_rejected_prefix(binder, sql)))
    assert problems == []
    assert refused >= 3 * 150   # nearly every schema has a column its first table lacks


def wide_schema(n_tables: int = 300) -> Schema:
    """Cryptic and awkward names: t_0042.col7, a table and a column both named age, keywords, spaces, case."""
    tables = [Table(f"t_{i:04d}", tuple(Column(f"col{j}") for j in range(3 + i % 11))
                    + tuple(Column(f"x{i}_{j}") for j in range(i % 4))) for i in range(n_tables)]
    tables += [Table("order", (Column("order_id"), Column("Home Town"), Column("group"), Column("From"))),
               Table("Order Items", (Column("order_id"), Column("Unit Price"))),
               Table("age", (Column("age"), Column("sex"))),
               Table("MixedCase", (Column("CamelCol"), Column("e-mail")))]
    return Schema("wide", "sqlite", tuple(tables))


WIDE = Binder(wide_schema())
WIDE_VALID = [
    'SELECT T1."Home Town", T2."Unit Price" FROM "order" AS T1 JOIN "Order Items" AS T2 ON T1.order_id = T2.order_id',
    "SELECT age.age FROM age WHERE age.sex = 'F' AND age > 3",
    "SELECT a.age FROM age AS a WHERE a.sex = 'F'",
    'SELECT mixedcase."e-mail" FROM MixedCase WHERE camelcol LIKE \'x%\'',
    "SELECT T1.col7, T2.x299_2 FROM t_0042 AS T1 JOIN t_0299 AS T2 ON T1.col0 = T2.col0",
    'SELECT "From", "group" FROM "order" WHERE "Home Town" = \'Oslo\'',
]


@pytest.mark.parametrize("sql", WIDE_VALID)
def test_wide_schema_valid(sql):
    assert WIDE.check(sql, final=True) is None
    assert first_rejected_prefix(WIDE, sql) is None


@pytest.mark.parametrize("sql,blamed", [
    ("SELECT T1.col7 FROM t_0042 AS T1 WHERE T1.x41_1 = 1", "x41_1"),   # x41_1 belongs to t_0041
    ("SELECT T1.col9 FROM t_0001 AS T1", "t_0001"),                     # t_0001 has col0..col3
    ('SELECT T1."Unit Price" FROM "order" AS T1', '"order"'),
    ("SELECT age.age FROM age WHERE age.col0 = 1", "col0"),
    ("SELECT sex FROM t_0005 WHERE", "t_0005"),
])
def test_wide_schema_wrong_table(sql, blamed):
    assert WIDE.check(sql + " ") == at(sql, blamed)
    assert WIDE.check(sql, final=True) == at(sql, blamed)


@pytest.mark.parametrize("sql,offset", [
    ("SELECT name FROMflight", len("SELECT name FROM")),            # a keyword glued to a table name
    ("SELECT name FROM flight_x AS T1 WHEREx", len("SELECT name FROM flight_x AS T1 WHERE")),
    ("SELECT nameFROM", len("SELECT name")),                        # a column glued to a keyword
])
def test_words_glued_together_are_refused_where_they_stop_being_a_word(sql, offset):
    from nl2sql.binding import Binder
    b = Binder(Schema("x", "sqlite", (Table("flight_x", (Column("name"), Column("code"))),)))
    assert b.check(sql) == offset
    assert b.check(sql[:offset]) is None
