"""Chart rules: which chart a result gets, from its column types alone; the specs are plain Vega-Lite data."""
import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pytest

from nl2sql import charts

CASES = [  # (what, frame, suggested kind, x, y)
    ("category + measure → bar", {"region": ["West", "South", "Online"], "stores": [5, 4, 1]}, "bar", "region", "stores"),
    ("date + measure → line", {"day": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)], "orders": [3, 4]}, "line", "day", "orders"),
    ("integer year + decimal measure → line", {"year": [2023, 2024], "revenue": [Decimal("10.5"), Decimal("12")]},
     "line", "year", "revenue"),
    ("month text + measure → line", {"month": ["2024-01", "2024-02"], "n": [1, 2]}, "line", "month", "n"),
    ("two measures → scatter", {"price": [1.0, 2.5, 3.0], "units": [10, 7, 2]}, "scatter", "price", "units"),
    ("id + measure → bar (ids are names)", {"customer_id": [7, 9], "spent": [1.5, 2.5]}, "bar", "customer_id", "spent"),
    ("bool + measure → bar", {"is_weekend": [True, False], "orders": [3, 9]}, "bar", "is_weekend", "orders"),
    ("one row → none", {"region": ["West"], "stores": [5]}, None, None, None),
    ("one column → none", {"stores": [5, 4]}, None, None, None),
    ("text only → none", {"first": ["a", "b"], "last": ["c", "d"]}, None, None, None),
    ("ids only → none", {"customer_id": [1, 2, 3]}, None, None, None),
]


@pytest.mark.parametrize("what,data,kind,x,y", CASES, ids=[c[0] for c in CASES])
def test_rules(what, data, kind, x, y):
    df = pd.DataFrame(data)
    s = charts.suggest(df)
    assert (s.kind, s.x, s.y) == (kind, x, y)
    spec = charts.spec(df)
    if kind is None:
        assert spec is None and s.options == ()
        return
    assert spec["mark"]["type"] == {"bar": "bar", "line": "line", "scatter": "point"}[kind]
    assert spec["encoding"]["x"]["field"] == x and spec["encoding"]["y"]["field"] == y
    assert spec["encoding"]["y"]["type"] == "quantitative"
    json.dumps(spec)  # plain data, nothing callable
    assert s.options[0] == kind and set(s.options) == set(charts.KINDS)


def test_time_series_is_coloured_by_a_small_category():
    df = pd.DataFrame({"year": [2023, 2023, 2024, 2024], "region": ["W", "S", "W", "S"], "n": [1, 2, 3, 4]})
    spec = charts.spec(df)
    assert spec["mark"]["type"] == "line" and spec["encoding"]["color"]["field"] == "region"
    assert spec["encoding"]["x"]["type"] == "ordinal"  # 2024, not 2,024


def test_switching_kind_and_refusing_unknown_kinds():
    df = pd.DataFrame({"region": ["West", "South"], "stores": [5, 4]})
    assert charts.spec(df, "line")["mark"]["type"] == "line"
    assert charts.spec(df, "scatter")["mark"]["type"] == "point"
    assert charts.spec(df, "pie") is None


def test_field_names_with_dots_are_escaped():
    df = pd.DataFrame({"t.region": ["a", "b"], "COUNT(*)": [1, 2]})
    enc = charts.spec(df)["encoding"]
    assert enc["x"]["field"] == "t\\.region" and enc["y"]["field"] == "COUNT(*)" and enc["x"]["title"] == "t.region"


def test_prepare_makes_decimals_floats_and_dates_timestamps():
    df = pd.DataFrame({"day": [dt.date(2024, 1, 2), None], "amount": [Decimal("1.25"), Decimal("2")], "s": ["x", "y"]})
    out = charts.prepare(df)
    assert pd.api.types.is_float_dtype(out["amount"]) and out["amount"].tolist() == [1.25, 2.0]
    assert pd.api.types.is_datetime64_any_dtype(out["day"]) and out["day"][0] == pd.Timestamp("2024-01-02")
    assert out["s"].tolist() == ["x", "y"] and df["amount"][0] == Decimal("1.25")  # the original is untouched
