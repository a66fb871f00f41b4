"""Write schemas/demo_pairs.jsonl: the demo warehouse's seed query log and benchmark.

Each template below was written and its SQL read by hand; parameters vary the values. Every pair is then
checked mechanically: it must validate against the introspected schema and return at least one row.
    python schemas/make_demo_pairs.py
"""
import json
import sys

REV = "ol.quantity * ol.unit_price * (1 - ol.discount)"
CATS = ["Electronics", "Home", "Clothing", "Sports", "Grocery"]
STATES = ["WA", "CA", "TX", "NY", "IL"]
YEARS = [2023, 2024, 2025]
REGIONS = ["West", "Midwest", "South", "Northeast"]
SEGMENTS = ["Consumer", "Corporate", "Home Office"]
TIERS = ["Gold", "Platinum", "Silver"]
REASONS = ["damaged", "wrong item", "changed mind"]

T = []  # (question template, sql template, {param: values})


def t(question, sql, **params):
    T.append((question, sql, params))


t("How many customers are there?", "SELECT COUNT(*) FROM customers")
t("How many orders were placed in total?", "SELECT COUNT(*) FROM orders")
t("How many products do we sell?", "SELECT COUNT(*) FROM products")
t("How many stores do we have in each region?", "SELECT region, COUNT(*) FROM stores GROUP BY region")
t("List the names of all stores in {s}.", "SELECT store_name FROM stores WHERE state = '{s}'", s=STATES[:4])
t("How many customers live in {s}?", "SELECT COUNT(*) FROM customers WHERE state = '{s}'", s=STATES)
t("How many products are in the {c} category?", "SELECT COUNT(*) FROM products WHERE category = '{c}'", c=CATS)
t("What is the average list price of {c} products?", "SELECT AVG(unit_price) FROM products WHERE category = '{c}'", c=CATS)
t("What is the most expensive product in {c}?",
  "SELECT product_name FROM products WHERE category = '{c}' ORDER BY unit_price DESC LIMIT 1", c=CATS)
t("How many orders were placed in {y}?",
  "SELECT COUNT(*) FROM orders WHERE order_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=YEARS)
t("What was the total revenue in {y}?",
  f"SELECT SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' AND o.status = 'completed'", y=YEARS)
t("What was the revenue of each product category in {y}?",
  f"SELECT p.category, SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN products AS p ON ol.product_id = p.product_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' "
  "AND o.status = 'completed' GROUP BY p.category", y=YEARS)
t("Which five products sold the most units in {y}?",
  "SELECT p.product_name, SUM(ol.quantity) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN products AS p ON ol.product_id = p.product_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' "
  "GROUP BY p.product_name ORDER BY SUM(ol.quantity) DESC LIMIT 5", y=YEARS)
t("Which five products brought in the most revenue in Q{qq} {y}?",
  f"SELECT p.product_name, SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN products AS p ON ol.product_id = p.product_id JOIN calendar AS c ON o.order_date = c.date_key "
  "WHERE c.year = {y} AND c.quarter = {qq} AND o.status = 'completed' GROUP BY p.product_name "
  f"ORDER BY SUM({REV}) DESC LIMIT 5", y=[2024, 2025], qq=[1, 4])
t("How many orders were placed each month of {y}?",
  "SELECT c.month, COUNT(*) FROM orders AS o JOIN calendar AS c ON o.order_date = c.date_key "
  "WHERE c.year = {y} GROUP BY c.month ORDER BY c.month", y=YEARS)
t("How many orders were placed in each quarter of {y}?",
  "SELECT c.quarter, COUNT(*) FROM orders AS o JOIN calendar AS c ON o.order_date = c.date_key "
  "WHERE c.year = {y} GROUP BY c.quarter ORDER BY c.quarter", y=YEARS)
t("How many orders were placed on weekends in {y}?",
  "SELECT COUNT(*) FROM orders AS o JOIN calendar AS c ON o.order_date = c.date_key "
  "WHERE c.year = {y} AND c.is_weekend = TRUE", y=YEARS)
t("What share of orders in {y} were placed online?",
  "SELECT AVG(CASE WHEN channel = 'online' THEN 1.0 ELSE 0 END) FROM orders "
  "WHERE order_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=YEARS)
t("How many orders came through each channel?", "SELECT channel, COUNT(*) FROM orders GROUP BY channel")
t("How many orders have each status?", "SELECT status, COUNT(*) FROM orders GROUP BY status")
t("How many orders were cancelled in {y}?",
  "SELECT COUNT(*) FROM orders WHERE status = 'cancelled' AND order_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=YEARS)
t("Which store had the most orders in {y}?",
  "SELECT s.store_name FROM orders AS o JOIN stores AS s ON o.store_id = s.store_id "
  "WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' GROUP BY s.store_name ORDER BY COUNT(*) DESC LIMIT 1", y=YEARS)
t("What was the revenue of each region in {y}?",
  f"SELECT s.region, SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN stores AS s ON o.store_id = s.store_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' "
  "AND o.status = 'completed' GROUP BY s.region", y=YEARS)
t("How many orders did stores in the {r} region take?",
  "SELECT COUNT(*) FROM orders AS o JOIN stores AS s ON o.store_id = s.store_id WHERE s.region = '{r}'", r=REGIONS)
t("How many customers are in the {g} segment?", "SELECT COUNT(*) FROM customers WHERE segment = '{g}'", g=SEGMENTS)
t("How many {l} loyalty customers do we have?", "SELECT COUNT(*) FROM customers WHERE loyalty_tier = '{l}'", l=TIERS)
t("How many customers signed up in {y}?",
  "SELECT COUNT(*) FROM customers WHERE signup_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=[2021, 2022, 2023])
t("Who are the top 10 customers by number of orders?",
  "SELECT c.first_name, c.last_name, COUNT(*) FROM orders AS o JOIN customers AS c ON o.customer_id = c.customer_id "
  "GROUP BY c.customer_id, c.first_name, c.last_name ORDER BY COUNT(*) DESC LIMIT 10")
t("Who are the top 5 customers by total spend?",
  f"SELECT c.first_name, c.last_name, SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN customers AS c ON o.customer_id = c.customer_id WHERE o.status = 'completed' "
  f"GROUP BY c.customer_id, c.first_name, c.last_name ORDER BY SUM({REV}) DESC LIMIT 5")
t("What is the average number of items per order?",
  "SELECT AVG(n) FROM (SELECT order_id, SUM(quantity) AS n FROM order_lines GROUP BY order_id) AS t")
t("What is the average order value in {y}?",
  f"SELECT AVG(v) FROM (SELECT o.order_id, SUM({REV}) AS v FROM order_lines AS ol JOIN orders AS o "
  "ON ol.order_id = o.order_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' GROUP BY o.order_id) AS t", y=YEARS)
t("How many returns were there for each reason?", "SELECT reason, COUNT(*) FROM returns GROUP BY reason")
t("How many items were returned because they were {r}?",
  "SELECT SUM(quantity) FROM returns WHERE reason = '{r}'", r=REASONS)
t("Which product category has the most returns?",
  "SELECT p.category FROM returns AS r JOIN products AS p ON r.product_id = p.product_id "
  "GROUP BY p.category ORDER BY COUNT(*) DESC LIMIT 1")
t("How many returns were made in {y}?",
  "SELECT COUNT(*) FROM returns WHERE return_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=YEARS)
t("Which brand has the most products?", "SELECT brand FROM products GROUP BY brand ORDER BY COUNT(*) DESC LIMIT 1")
t("List the subcategories of {c}.", "SELECT DISTINCT subcategory FROM products WHERE category = '{c}'", c=CATS)
t("What is the average margin of products in each category?",
  "SELECT category, AVG(unit_price - unit_cost) FROM products GROUP BY category")
t("Which products cost more than {p} dollars?", "SELECT product_name FROM products WHERE unit_price > {p}", p=[1000, 1500, 2000])
t("How many products cost between {a} and {b} dollars?",
  "SELECT COUNT(*) FROM products WHERE unit_price BETWEEN {a} AND {b}", a=[10], b=[50, 100])
t("Which products have never been ordered?",
  "SELECT product_name FROM products WHERE product_id NOT IN (SELECT product_id FROM order_lines)")
t("Which customers have never placed an order?",
  "SELECT first_name, last_name FROM customers WHERE customer_id NOT IN (SELECT customer_id FROM orders)")
t("How many distinct customers ordered in {y}?",
  "SELECT COUNT(DISTINCT customer_id) FROM orders WHERE order_date BETWEEN '{y}-01-01' AND '{y}-12-31'", y=YEARS)
t("Which stores opened after {y}?", "SELECT store_name FROM stores WHERE opened_date > '{y}-12-31'", y=[2016, 2018, 2020])
t("What is the largest store by floor space?", "SELECT store_name FROM stores ORDER BY square_feet DESC LIMIT 1")
t("What is the total floor space of stores in the {r} region?",
  "SELECT SUM(square_feet) FROM stores WHERE region = '{r}'", r=REGIONS)
t("How many units of {c} products were sold in {y}?",
  "SELECT SUM(ol.quantity) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN products AS p ON ol.product_id = p.product_id WHERE p.category = '{c}' "
  "AND o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31'", c=CATS[:3], y=[2024, 2025])
t("Which categories had more than {n} orders lines?",
  "SELECT p.category FROM order_lines AS ol JOIN products AS p ON ol.product_id = p.product_id "
  "GROUP BY p.category HAVING COUNT(*) > {n}", n=[20000, 30000])
t("What is the average discount given on {c} products?",
  "SELECT AVG(ol.discount) FROM order_lines AS ol JOIN products AS p ON ol.product_id = p.product_id "
  "WHERE p.category = '{c}'", c=CATS)
t("How many order lines had a discount of at least 20 percent?", "SELECT COUNT(*) FROM order_lines WHERE discount >= 0.2")
t("Which customers from {s} are Platinum members?",
  "SELECT first_name, last_name FROM customers WHERE state = '{s}' AND loyalty_tier = 'Platinum'", s=STATES[:3])
t("How many customers are in each loyalty tier?", "SELECT loyalty_tier, COUNT(*) FROM customers GROUP BY loyalty_tier")
t("Which month of {y} had the highest revenue?",
  f"SELECT c.month_name FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN calendar AS c ON o.order_date = c.date_key WHERE c.year = {y} AND o.status = 'completed' "
  f"GROUP BY c.month_name ORDER BY SUM({REV}) DESC LIMIT 1", y=YEARS)
t("On which day of the week do we get the most orders?",
  "SELECT c.day_of_week FROM orders AS o JOIN calendar AS c ON o.order_date = c.date_key "
  "GROUP BY c.day_of_week ORDER BY COUNT(*) DESC LIMIT 1")
t("How many customers ordered both online and in a store?",
  "SELECT COUNT(*) FROM (SELECT customer_id FROM orders WHERE channel = 'online' INTERSECT "
  "SELECT customer_id FROM orders WHERE channel = 'in-store') AS t")
t("Which states have customers but no store?",
  "SELECT DISTINCT state FROM customers EXCEPT SELECT state FROM stores")
t("What is the name and email of customer {i}?", "SELECT first_name, last_name, email FROM customers WHERE customer_id = {i}",
  i=[17, 4242])
t("When was order {i} placed and what is its status?", "SELECT order_date, status FROM orders WHERE order_id = {i}",
  i=[100500, 123456])
t("What is the revenue per store in {y}, highest first?",
  f"SELECT s.store_name, SUM({REV}) FROM order_lines AS ol JOIN orders AS o ON ol.order_id = o.order_id "
  "JOIN stores AS s ON o.store_id = s.store_id WHERE o.order_date BETWEEN '{y}-01-01' AND '{y}-12-31' "
  f"GROUP BY s.store_name ORDER BY SUM({REV}) DESC", y=[2025])
t("How many products does each brand sell in {c}?",
  "SELECT brand, COUNT(*) FROM products WHERE category = '{c}' GROUP BY brand", c=CATS[:2])
t("Which customers have a last name of {n}?", "SELECT first_name, last_name FROM customers WHERE last_name = '{n}'",
  n=["Garcia", "Lee"])
t("How many customers have an email at example.com?", "SELECT COUNT(*) FROM customers WHERE email LIKE '%@example.com'")
t("Which products have Phone or Laptop in their name?",
  "SELECT product_name FROM products WHERE product_name LIKE '%Phone%' OR product_name LIKE '%Laptop%'")


def pairs():
    import itertools
    for q, sql, params in T:
        keys = list(params)
        for values in itertools.product(*(params[k] for k in keys)) if keys else [()]:
            sub = dict(zip(keys, values))
            # kind: the template, so that benchmarks can hold out whole kinds of question, not rewordings
            yield {"question": q.format(**sub), "sql": sql.format(**sub), "db": "demo", "kind": q}


def main():
    from nl2sql.api import Pipeline
    from nl2sql.executor import run_checked
    from nl2sql.validate import validate
    from nl2sql.schemas.demo import PAIRS
    pipe = Pipeline()
    schema, wh = pipe.schema(None), pipe.warehouse(None)
    kept = []
    for p in pairs():
        checked = validate(p["sql"], schema)
        result = run_checked(wh, checked.sql, pipe.settings)
        if result.df.empty:
            print(f"EMPTY: {p['question']}", file=sys.stderr)
            continue
        kept.append(p)
    PAIRS.write_text("".join(json.dumps(p) + "\n" for p in kept))
    print(f"{len(kept)} pairs written to {PAIRS}")


if __name__ == "__main__":
    main()
