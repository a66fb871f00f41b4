"""Which chart suits a query result, as a declarative Vega-Lite spec chosen by rules over the column types.

Nothing here runs code the model wrote: the spec is plain data (mark + encodings naming the result's columns),
and the chart library draws it.

>>> import pandas as pd
>>> df = pd.DataFrame({"region": ["West", "South"], "stores": [5, 4]})
>>> suggest(df)
Suggestion(kind='bar', options=('bar', 'line', 'scatter'), x='region', y='stores', color=None)
>>> spec(df, "bar")["mark"]["type"], spec(df, "bar")["encoding"]["x"]["field"]
('bar', 'region')
"""
from __future__ import annotations

import datetime as dt
import decimal
import re
from dataclasses import dataclass

KINDS = ("bar", "line", "scatter")
TEMPORAL, ORDINAL_TIME, QUANTITATIVE, NOMINAL = "temporal", "ordinal-time", "quantitative", "nominal"

_TIME_NAMES = re.compile(r"^(year|month|quarter|week|day|hour|yr|mon)$|_(year|month|quarter|week)$", re.I)
_ID_NAMES = re.compile(r"^id$|_id$|^id_", re.I)
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}(-\d{2})?([ T]\d{2}:\d{2}(:\d{2})?)?$")
_MAX_COLOR_GROUPS = 12


@dataclass(frozen=True)
class Suggestion:
    kind: str | None              # the automatic choice, or None when no chart suits the result
    options: tuple[str, ...]      # every kind that can draw this result (the analyst may switch among them)
    x: str | None = None
    y: str | None = None
    color: str | None = None


def role(series) -> str:
    """The part a column can play in a chart: temporal, ordinal-time (an integer year/month...), quantitative
    or nominal. Identifiers (id, *_id) are nominal: their numbers are names, not amounts.

    >>> import pandas as pd
    >>> [role(pd.Series(v, name=n)) for n, v in [("year", [2023, 2024]), ("customer_id", [1, 2]),
    ...     ("total", [decimal.Decimal("1.5")]), ("day", [dt.date(2024, 1, 1)]), ("m", ["2024-01", "2024-02"]),
    ...     ("state", ["WA", "OR"]), ("flag", [True, False])]]
    ['ordinal-time', 'nominal', 'quantitative', 'temporal', 'temporal', 'nominal', 'nominal']
    """
    import pandas as pd
    name = str(series.name or "")
    if pd.api.types.is_bool_dtype(series):
        return NOMINAL
    if pd.api.types.is_datetime64_any_dtype(series):
        return TEMPORAL
    if pd.api.types.is_numeric_dtype(series):
        if _ID_NAMES.search(name):
            return NOMINAL
        if pd.api.types.is_integer_dtype(series) and _TIME_NAMES.search(name):
            return ORDINAL_TIME
        return QUANTITATIVE
    values = series.dropna()
    if len(values) == 0:
        return NOMINAL
    if all(isinstance(v, (dt.date, dt.datetime, pd.Timestamp)) for v in values):
        return TEMPORAL
    if all(isinstance(v, (decimal.Decimal, int, float)) and not isinstance(v, bool) for v in values):
        return NOMINAL if _ID_NAMES.search(name) else QUANTITATIVE
    if all(isinstance(v, str) and _DATE_TEXT.match(v) for v in values):
        return TEMPORAL
    return NOMINAL


def roles(df) -> dict[str, str]:
    return {c: role(df[c]) for c in df.columns}


def suggest(df) -> Suggestion:
    """The rules: a time column and a measure → line; a category and a measure → bar; two measures → scatter;
    anything else (one row, no measure) → no chart."""
    if df is None or len(df) < 2 or len(df.columns) < 2:
        return Suggestion(None, ())
    r = roles(df)
    times = [c for c, k in r.items() if k in (TEMPORAL, ORDINAL_TIME)]
    measures = [c for c, k in r.items() if k == QUANTITATIVE]
    cats = [c for c, k in r.items() if k == NOMINAL]
    if not measures:
        return Suggestion(None, ())
    color = next((c for c in cats if df[c].nunique() <= _MAX_COLOR_GROUPS), None)
    if times:
        return Suggestion("line", ("line", "bar", "scatter"), times[0], measures[0], color)
    if cats:
        return Suggestion("bar", ("bar", "line", "scatter"), cats[0], measures[0], None)
    if len(measures) >= 2:
        return Suggestion("scatter", ("scatter", "line", "bar"), measures[0], measures[1], None)
    return Suggestion(None, ())


def _field(name: str) -> str:
    """Vega-Lite reads '.', '[' and ']' in a field name as nested access; escape them."""
    return re.sub(r"([.\[\]\\])", r"\\\1", str(name))


_VL_TYPE = {TEMPORAL: "temporal", ORDINAL_TIME: "ordinal", QUANTITATIVE: "quantitative", NOMINAL: "nominal"}


def spec(df, kind: str | None = None) -> dict | None:
    """A Vega-Lite spec (without data) drawing `df` as `kind` (default: the suggested kind); None when the
    result suits no chart or `kind` cannot draw it."""
    s = suggest(df)
    kind = kind or s.kind
    if kind is None or kind not in s.options:
        return None
    r = roles(df)
    x_type = _VL_TYPE[r[s.x]]
    x = {"field": _field(s.x), "type": x_type, "title": str(s.x)}
    y = {"field": _field(s.y), "type": "quantitative", "title": str(s.y)}
    mark: dict = {"type": {"bar": "bar", "line": "line", "scatter": "point"}[kind], "tooltip": True}
    if kind == "bar" and x_type == "nominal":
        x["sort"] = "-y"
    if kind == "line":
        mark["point"] = True
        if x_type == "nominal":  # a line over categories keeps the result's order
            x["sort"] = None
    encoding = {"x": x, "y": y}
    if s.color and kind != "bar":
        encoding["color"] = {"field": _field(s.color), "type": "nominal", "title": str(s.color)}
    return {"mark": mark, "encoding": encoding}


def prepare(df):
    """A copy of `df` the chart library can draw: exact decimals as floats, dates and date-like text as
    timestamps. The table shows the original."""
    import pandas as pd
    out = df.copy()
    for c, k in roles(df).items():
        if k == QUANTITATIVE and not pd.api.types.is_numeric_dtype(out[c]):
            out[c] = pd.to_numeric(out[c].map(lambda v: float(v) if v is not None else None), errors="coerce")
        elif k == TEMPORAL and not pd.api.types.is_datetime64_any_dtype(out[c]):
            out[c] = pd.to_datetime(out[c].map(lambda v: str(v) if v is not None else None), errors="coerce")
    return out
