"""Pairs generated from a warehouse's own schema and glossary (training/synth.py): every pair validates, runs
under the guard and returns rows, on every engine; glossary metrics and joins are used when there is a glossary;
a wide schema with empty tables yields no pairs and no error."""
from __future__ import annotations

import sqlite3
from collections import Counter

import pytest

from nl2sql.api import Pipeline
from nl2sql.executor import execute
from nl2sql.training.synth import Synthesizer, synthesize

from conftest import SPIDER


def test_demo_pairs_run_and_use_the_glossary(settings):
    pipe = Pipeline(settings)
    pairs = synthesize(pipe, None, limit=400)
    templates = Counter(p["template"] for p in pairs)
    assert len(pairs) >= 200
    assert {"count", "count_where", "join_where", "metric", "metric_year", "metric_by", "join_rule"} <= set(templates)
    assert max(templates.values()) <= 60  # no template crowds out the rest
    for p in pairs[::15]:
        assert len(execute(p["sql"], None, settings=settings).df) > 0 or p["sql"].startswith("SELECT COUNT")
    revenue = next(e for e in pipe.glossary(None, pipe.schema(None)).entries if e.name == "revenue")
    metric = [p for p in pairs if p["template"] == "metric_year" and revenue.sql in p["sql"]]
    assert metric and all(revenue.filter in p["sql"] for p in metric)  # the metric's filter goes with it
    assert len({p["sql"] for p in pairs}) == len(pairs)


def test_without_a_glossary_only_schema_templates(settings):
    pairs = synthesize(Pipeline(settings.replace(glossary="off")), None, limit=400)
    assert pairs and not any(p["template"].startswith(("metric", "term", "join_rule")) for p in pairs)


def test_every_engine(any_db, settings):
    pipe = Pipeline(settings)
    pairs = synthesize(pipe, any_db, limit=100)
    assert {"count", "count_where", "count_by"} <= {p["template"] for p in pairs}
    assert any(p["template"] in ("join_count", "join_where") for p in pairs)  # concert -> singer
    france = [p for p in pairs if "'France'" in p["sql"]]
    assert france  # real values, the most frequent first
    for p in pairs[:10]:
        checked = __import__("nl2sql.validate", fromlist=["validate"]).validate(p["sql"], pipe.schema(any_db))
        assert checked.tables


@pytest.mark.parametrize("db_id", ["car_1", "flight_2", "pets_1", "poker_player"])
def test_spider_databases(db_id, settings, tmp_path):
    import shutil
    db = tmp_path / f"{db_id}.sqlite"
    shutil.copy(SPIDER / "database" / db_id / f"{db_id}.sqlite", db)
    pairs = synthesize(Pipeline(settings), str(db), limit=150)
    assert len(pairs) >= 20, db_id
    assert all(p["db"] == str(db.resolve()) for p in pairs)


def test_wide_empty_schema_gives_no_pairs_and_no_error(settings, tmp_path):
    db = tmp_path / "wide.sqlite"
    con = sqlite3.connect(db)
    for i in range(300):
        con.execute(f"CREATE TABLE t_{i:04d} (id INTEGER PRIMARY KEY, name TEXT, amount REAL, created DATE"
                    + (f", parent_id INTEGER REFERENCES t_{i - 1:04d}(id)" if i else "") + ")")
    con.commit()
    con.close()
    s = Synthesizer(Pipeline(settings), str(db))
    assert list(s.candidates())  # templates are proposed ...
    assert s.pairs(limit=50) == []  # ... but none returns rows, so none is kept
