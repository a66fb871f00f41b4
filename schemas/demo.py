"""Build the demo retail warehouse (schemas/retail.sql) deterministically into an embedded DuckDB file.

The same seed gives the same rows on every machine, so the demo benchmark's answers never drift.
"""
from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).parent
DDL = HERE / "retail.sql"
PAIRS = HERE / "demo_pairs.jsonl"
GLOSSARY = HERE / "retail.glossary.yml"  # the demo team's business glossary (nl2sql/glossary.py)
VERSION = "retail-v1"
SEED = 20261128

STATES = [("Seattle", "WA", "West"), ("Portland", "OR", "West"), ("San Francisco", "CA", "West"),
          ("Los Angeles", "CA", "West"), ("Denver", "CO", "West"), ("Chicago", "IL", "Midwest"),
          ("Minneapolis", "MN", "Midwest"), ("Detroit", "MI", "Midwest"), ("Austin", "TX", "South"),
          ("Houston", "TX", "South"), ("Atlanta", "GA", "South"), ("Miami", "FL", "South"),
          ("New York", "NY", "Northeast"), ("Boston", "MA", "Northeast"), ("Philadelphia", "PA", "Northeast")]
CATALOG = {
    "Electronics": {"Phones": (199, 1199), "Laptops": (499, 2499), "Headphones": (29, 399), "Cameras": (149, 1599)},
    "Home": {"Furniture": (59, 1299), "Kitchen": (9, 349), "Bedding": (19, 249), "Decor": (5, 149)},
    "Clothing": {"Shirts": (12, 89), "Shoes": (39, 199), "Jackets": (49, 349), "Accessories": (5, 79)},
    "Sports": {"Bikes": (249, 1899), "Fitness": (15, 599), "Outdoor": (19, 499)},
    "Grocery": {"Snacks": (1, 12), "Beverages": (1, 25), "Pantry": (2, 30)},
}
BRANDS = ["Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay"]
FIRST = ["Ava", "Liam", "Olivia", "Noah", "Emma", "Elijah", "Sophia", "James", "Mia", "Lucas", "Amelia", "Mason",
         "Harper", "Ethan", "Evelyn", "Logan", "Abigail", "Jacob", "Ella", "Aiden", "Chloe", "Daniel", "Grace", "Leo"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
        "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Lee"]
REASONS = ["damaged", "wrong item", "not as described", "changed mind", "late delivery"]


def demo_warehouse_path(settings=None) -> Path:
    """Path of the demo DuckDB file, building it on first use (atomically: build beside, then rename)."""
    from nl2sql.config import Settings
    settings = settings or Settings.from_env()
    path = Path(settings.data_dir) / f"demo-{VERSION}.duckdb"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        if tmp.exists():
            tmp.unlink()
        build(tmp)
        os.replace(tmp, path)
    return path


def build(path: Path) -> None:
    import duckdb
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED)
    days = pd.date_range("2023-01-01", "2025-12-31", freq="D")
    calendar = pd.DataFrame({
        "date_key": days.date, "year": days.year, "quarter": days.quarter, "month": days.month,
        "month_name": days.strftime("%B"), "day_of_week": days.strftime("%A"), "is_weekend": days.day_of_week >= 5})

    stores = [(i + 1, f"{city} {'Downtown' if i % 2 == 0 else 'Mall'}", city, st, region,
               pd.Timestamp("2015-01-01") + pd.Timedelta(days=int(rng.integers(0, 2900))),
               int(rng.integers(8, 60)) * 1000) for i, (city, st, region) in enumerate(STATES)]
    stores.append((len(stores) + 1, "Web", "Online", None, "Online", pd.Timestamp("2014-06-01"), None))
    stores = pd.DataFrame(stores, columns=["store_id", "store_name", "city", "state", "region", "opened_date",
                                           "square_feet"])
    stores["opened_date"] = stores["opened_date"].dt.date

    n_cust = 8000
    home = rng.integers(0, len(STATES), n_cust)
    first = rng.choice(FIRST, n_cust)
    last = rng.choice(LAST, n_cust)
    customers = pd.DataFrame({
        "customer_id": np.arange(1, n_cust + 1), "first_name": first, "last_name": last,
        "email": [f"{f.lower()}.{l.lower()}{i}@example.com" for i, (f, l) in enumerate(zip(first, last), 1)],
        "city": [STATES[h][0] for h in home], "state": [STATES[h][1] for h in home],
        "signup_date": (pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 2190, n_cust), unit="D")).date,
        "segment": rng.choice(["Consumer", "Corporate", "Home Office"], n_cust, p=[0.6, 0.25, 0.15]),
        "loyalty_tier": rng.choice(["None", "Silver", "Gold", "Platinum"], n_cust, p=[0.5, 0.3, 0.15, 0.05])})

    products = []
    pid = 1
    for cat, subs in CATALOG.items():
        for sub, (lo, hi) in subs.items():
            for k in range(int(rng.integers(12, 22))):
                price = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
                brand = BRANDS[int(rng.integers(0, len(BRANDS)))]
                products.append((pid, f"{brand} {sub[:-1] if sub.endswith('s') else sub} {100 + k}", cat, sub, brand,
                                 price, round(price * float(rng.uniform(0.45, 0.8)), 2)))
                pid += 1
    products = pd.DataFrame(products, columns=["product_id", "product_name", "category", "subcategory", "brand",
                                               "unit_price", "unit_cost"])

    n_orders = 45000
    # more orders later in the period and in Q4: a trend and a season to find
    t = rng.beta(1.3, 1.0, n_orders)
    day_idx = (t * (len(days) - 1)).astype(int)
    q4 = rng.random(n_orders) < 0.12
    day_idx = np.where(q4, rng.integers(len(days) - 92, len(days), n_orders) - 365 * rng.integers(0, 3, n_orders),
                       day_idx).clip(0, len(days) - 1)
    online = rng.random(n_orders) < 0.35
    store = np.where(online, len(stores), rng.integers(1, len(stores), n_orders))
    orders = pd.DataFrame({
        "order_id": np.arange(100001, 100001 + n_orders), "customer_id": rng.integers(1, n_cust + 1, n_orders),
        "store_id": store, "order_date": days[np.sort(day_idx)].date,
        "channel": np.where(online, "online", "in-store"),
        "status": rng.choice(["completed", "cancelled", "returned"], n_orders, p=[0.9, 0.04, 0.06])})

    n_lines = rng.integers(1, 6, n_orders)
    line_order = np.repeat(orders["order_id"].to_numpy(), n_lines)
    line_no = np.concatenate([np.arange(1, k + 1) for k in n_lines])
    popularity = rng.zipf(1.6, len(products)).astype(float)
    popularity /= popularity.sum()
    prod = rng.choice(products["product_id"].to_numpy(), len(line_order), p=popularity)
    price = products.set_index("product_id").loc[prod, "unit_price"].to_numpy()
    order_lines = pd.DataFrame({
        "order_id": line_order, "line_number": line_no, "product_id": prod,
        "quantity": rng.choice([1, 1, 1, 2, 2, 3, 4, 6], len(line_order)),
        "unit_price": price, "discount": rng.choice([0, 0, 0, 0.05, 0.1, 0.15, 0.2, 0.3], len(line_order))})

    returned = orders[orders["status"] == "returned"]
    first_lines = order_lines.drop_duplicates("order_id").set_index("order_id")
    rdates = pd.to_datetime(returned["order_date"]) + pd.to_timedelta(rng.integers(2, 40, len(returned)), unit="D")
    returns = pd.DataFrame({
        "return_id": np.arange(1, len(returned) + 1), "order_id": returned["order_id"].to_numpy(),
        "product_id": first_lines.loc[returned["order_id"], "product_id"].to_numpy(),
        "return_date": rdates.dt.date.to_numpy(),
        "quantity": first_lines.loc[returned["order_id"], "quantity"].to_numpy(),
        "reason": rng.choice(REASONS, len(returned), p=[0.3, 0.2, 0.2, 0.2, 0.1])})

    con = duckdb.connect(str(path))
    try:
        con.execute(DDL.read_text())
        for name, df in [("calendar", calendar), ("stores", stores), ("customers", customers),
                         ("products", products), ("orders", orders), ("order_lines", order_lines),
                         ("returns", returns)]:
            con.register("frame", df)
            con.execute(f"INSERT INTO {name} SELECT * FROM frame")
            con.unregister("frame")
        con.execute("CHECKPOINT")
    finally:
        con.close()
