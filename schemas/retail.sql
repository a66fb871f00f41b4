-- The demo retail warehouse: a star schema of orders around customers, products, stores and a calendar.
-- schemas/demo.py fills it deterministically (seeded) into an embedded DuckDB file on first use.

CREATE TABLE calendar (
    date_key DATE PRIMARY KEY,
    year INTEGER,
    quarter INTEGER,
    month INTEGER,
    month_name VARCHAR,
    day_of_week VARCHAR,
    is_weekend BOOLEAN
);
COMMENT ON TABLE calendar IS 'One row per day from 2023-01-01 to 2025-12-31';
COMMENT ON COLUMN calendar.quarter IS 'Calendar quarter 1-4';

CREATE TABLE stores (
    store_id INTEGER PRIMARY KEY,
    store_name VARCHAR,
    city VARCHAR,
    state VARCHAR,
    region VARCHAR,
    opened_date DATE,
    square_feet INTEGER
);
COMMENT ON TABLE stores IS 'Physical shops; online orders use the store Web';
COMMENT ON COLUMN stores.state IS 'Two-letter US state code';
COMMENT ON COLUMN stores.region IS 'Sales region: West, Midwest, South, Northeast or Online';

CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    first_name VARCHAR,
    last_name VARCHAR,
    email VARCHAR,
    city VARCHAR,
    state VARCHAR,
    signup_date DATE,
    segment VARCHAR,
    loyalty_tier VARCHAR
);
COMMENT ON COLUMN customers.segment IS 'Consumer, Corporate or Home Office';
COMMENT ON COLUMN customers.loyalty_tier IS 'None, Silver, Gold or Platinum';

CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    product_name VARCHAR,
    category VARCHAR,
    subcategory VARCHAR,
    brand VARCHAR,
    unit_price DECIMAL(10, 2),
    unit_cost DECIMAL(10, 2)
);
COMMENT ON COLUMN products.unit_price IS 'Current list price in USD';
COMMENT ON COLUMN products.unit_cost IS 'What one unit costs us in USD';

CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER REFERENCES customers (customer_id),
    store_id INTEGER REFERENCES stores (store_id),
    order_date DATE,
    channel VARCHAR,
    status VARCHAR
);
COMMENT ON COLUMN orders.channel IS 'online or in-store';
COMMENT ON COLUMN orders.status IS 'completed, cancelled or returned';

CREATE TABLE order_lines (
    order_id INTEGER REFERENCES orders (order_id),
    line_number INTEGER,
    product_id INTEGER REFERENCES products (product_id),
    quantity INTEGER,
    unit_price DECIMAL(10, 2),
    discount DECIMAL(4, 2),
    PRIMARY KEY (order_id, line_number)
);
COMMENT ON TABLE order_lines IS 'One row per product in an order; revenue = quantity * unit_price * (1 - discount)';
COMMENT ON COLUMN order_lines.discount IS 'Fraction off the price, 0 to 0.3';

CREATE TABLE returns (
    return_id INTEGER PRIMARY KEY,
    order_id INTEGER REFERENCES orders (order_id),
    product_id INTEGER REFERENCES products (product_id),
    return_date DATE,
    quantity INTEGER,
    reason VARCHAR
);
COMMENT ON COLUMN returns.reason IS 'damaged, wrong item, not as described, changed mind or late delivery';
