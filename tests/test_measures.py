"""Glossary metrics as columns the model can name (nl2sql/measures.py): which entries become measures, how the
model sees them, and that a query naming one runs as its definition and filter on every engine."""
from __future__ import annotations

import pytest
from conftest import SPIDER

from nl2sql.api import Pipeline
from nl2sql.generate import ScriptedGenerator
from nl2sql.glossary import parse_glossary
from nl2sql.measures import Measure, column_name, expand, measures_of, with_measures
from nl2sql.prompt import build_prompt
from nl2sql.schema import Column, ForeignKey, Schema, Table
from nl2sql.validate import validate

SHOP = Schema("shop", "sqlite", (
    Table("orders", (Column("order_id", "INTEGER", True), Column("placed", "DATE"), Column("status", "TEXT"))),
    Table("lines", (Column("order_id", "INTEGER"), Column("qty", "INTEGER"), Column("price", "REAL"),
                    Column("cost", "REAL")), foreign_keys=(ForeignKey("order_id", "orders", "order_id"),)),
))
GLOSSARY = """
metrics:
  - name: revenue
    sql: SUM(lines.qty * lines.price)
    filter: orders.status = 'completed'
  - name: orders placed
    sql: COUNT(DISTINCT orders.order_id)
  - name: qty
    sql: SUM(lines.qty)
  - name: basket
    sql: AVG(lines.qty * lines.price)
terms:
  - name: profit per unit
    sql: lines.price - lines.cost
  - name: list price
    sql: lines.price
  - name: done
    sql: orders.status = 'completed'
"""


def test_expressions_over_one_tables_rows_become_measures_and_nothing_else():
    ms = measures_of(parse_glossary(GLOSSARY, SHOP), SHOP)
    # COUNT DISTINCT is no row expression; 'qty' is a real column already; a plain column or a condition is
    # something the model can write as it is
    assert [(m.table, m.column, m.sql, m.filter) for m in ms] == [
        ("lines", "revenue", "qty * price", "orders.status = 'completed'"),
        ("lines", "basket", "qty * price", ""),
        ("lines", "profit_per_unit", "price - cost", "")]
    assert column_name("Revenue (net, USD)") == "revenue_net_usd"


def test_the_model_sees_measures_as_columns_with_their_definition_quoted_as_data():
    ms = (Measure("lines", "revenue", "qty * price", "orders.status = 'completed'", "revenue"),)
    prompt = build_prompt(with_measures(SHOP, ms), "Total revenue?")
    assert "lines(order_id number, qty number, price number, cost number, revenue number \"= qty * price, where " \
           "orders.status = 'completed'\")" in prompt
    assert with_measures(SHOP, ()) is SHOP


@pytest.mark.parametrize("sql, expected", [
    ("SELECT SUM(T1.revenue) FROM lines AS T1 JOIN orders AS T2 ON T1.order_id = T2.order_id",
     "SELECT SUM((T1.qty * T1.price)) FROM lines AS T1 JOIN orders AS T2 ON T1.order_id = T2.order_id "
     "WHERE T2.status = 'completed'"),
    ("SELECT SUM(revenue) FROM lines WHERE qty > 1",   # orders not read: joined on the foreign key for the filter
     "SELECT SUM((lines.qty * lines.price)) FROM lines JOIN orders AS f1 ON lines.order_id = f1.order_id "
     "WHERE qty > 1 AND f1.status = 'completed'"),
    ("SELECT placed, AVG(l.basket) FROM orders JOIN lines AS l ON l.order_id = orders.order_id GROUP BY placed",
     "SELECT placed, AVG((l.qty * l.price)) FROM orders JOIN lines AS l ON l.order_id = orders.order_id GROUP BY placed"),
    ("SELECT revenue FROM orders", "SELECT revenue FROM orders"),   # not a column of orders: the validator says so
    ("SELECT qty FROM lines", "SELECT qty FROM lines"),
])
def test_a_named_measure_expands_to_its_definition_and_filter(sql, expected):
    ms = measures_of(parse_glossary(GLOSSARY, SHOP), SHOP)
    assert expand(sql, ms, SHOP) == expected


def test_the_filter_of_a_metric_on_a_table_twice_in_scope_is_not_guessed():
    ms = measures_of(parse_glossary(GLOSSARY, SHOP), SHOP)
    sql = ("SELECT SUM(l.revenue) FROM lines AS l JOIN orders AS a ON l.order_id = a.order_id "
           "JOIN orders AS b ON b.order_id = a.order_id")
    assert expand(sql, ms, SHOP) == sql.replace("SUM(l.revenue)", "SUM((l.qty * l.price))")


def test_every_spider_schema_with_a_measure_on_each_table_expands_to_valid_sql():
    """A measure over each table's first two number columns (quoted names, keywords, spaces), named in a query:
    the expansion validates against the real schema."""
    import json

    from nl2sql.schema import from_spider
    checked = 0
    for entry in json.loads((SPIDER / "tables.json").read_text()):
        schema = from_spider(entry)
        for t in schema.tables:
            nums = [c.name for c in t.columns if c.type.lower() in ("number", "integer", "int", "real")][:2]
            if len(nums) < 2:
                continue
            m = Measure(t.name, "zz_measure", " + ".join(f'"{n}"' for n in nums))
            seen = with_measures(schema, (m,))
            sql = f'SELECT SUM(zz_measure) FROM "{t.name}"'
            validate(sql, seen)                       # what the model may write over what it sees
            validate(expand(sql, (m,), schema), schema)   # what runs
            checked += 1
    assert checked > 200


@pytest.mark.parametrize("kind", ["sqlite", "duckdb", "postgres", "mariadb"])
def test_a_question_answered_through_a_measure_on_each_engine(kind, shop_db, settings, tmp_path):
    glossary = tmp_path / "shop.glossary.yml"
    glossary.write_text("metrics:\n  - name: revenue\n    sql: SUM(line_items.qty * line_items.price)\n"
                        "    filter: orders.status = 'completed'\n")
    db = shop_db(kind)

    def ask(question, sql, **changes):
        s = settings.replace(glossary=str(glossary), **changes)
        return Pipeline(s, generator=ScriptedGenerator([sql])).ask(question, db)

    # 2025: order 2 (5 + 3 x 2) and order 4 (7.5); order 3 was cancelled, orders 1 and 5 are other years
    a = ask("What was the total revenue in 2025?", "SELECT SUM(revenue) FROM line_items")
    assert a.ok and float(a.df.iloc[0, 0]) == pytest.approx(18.5), a.sql
    a = ask("What was the revenue per store in 2025?",
            "SELECT s.store_name, SUM(l.revenue) FROM line_items AS l JOIN orders AS o ON l.order_id = o.order_id "
            "JOIN stores AS s ON o.store_id = s.store_id WHERE o.placed >= '2025-01-01' AND o.placed < '2026-01-01' "
            "GROUP BY s.store_name")
    assert a.ok and {r[0]: float(r[1]) for r in a.df.values.tolist()} == {"Harbor": 11.0, "Summit": 7.5}, a.sql
    # a year column this schema lacks: the year goes on the date in reach before validation
    a = ask("What was the total revenue in 2025?", "SELECT SUM(revenue) FROM line_items WHERE year = 2025")
    assert a.ok and float(a.df.iloc[0, 0]) == pytest.approx(18.5), a.sql
    off = ask("What was the total revenue in 2025?", "SELECT SUM(revenue) FROM line_items WHERE year = 2025",
              rewrites="none")
    assert not off.ok and "year" in off.error
    off = ask("What was the total revenue in 2025?", "SELECT SUM(revenue) FROM line_items", glossary_columns=False)
    assert not off.ok and "revenue" in off.error
