"""The data-team page's knowledge tools through Streamlit's AppTest: the glossary editor (check, save, refuse,
try a question), the verified examples and their import, the learning-curve chart. Real demo DuckDB warehouse,
real SQLite files, real query log; the model is nl2sql.generate.ScriptedGenerator."""
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nl2sql.api import Pipeline
from nl2sql.generate import ScriptedGenerator
from nl2sql.querylog import QueryLog, db_key
from nl2sql.ui.session import PIPELINE_KEY
from nl2sql.schemas.demo import GLOSSARY, demo_warehouse_path

GOOD = """\
metrics:
  - name: store count
    synonyms: [outlets]
    sql: COUNT(stores.store_id)
    description: How many stores there are.
terms:
  - name: shop town
    sql: stores.city
"""


def _page(learning_curve=None):
    from nl2sql.ui import team
    team.render(learning_curve=learning_curve)


@pytest.fixture
def demo_settings(settings, tmp_path):
    """Settings whose data dir is this test's own (a copy of the built demo warehouse in it), so a saved user
    glossary never leaks into another test."""
    built = demo_warehouse_path(settings)
    shutil.copy(built, tmp_path / built.name)
    return settings.replace(data_dir=tmp_path, query_log=str(tmp_path / "querylog.sqlite"), glossary="")


@pytest.fixture
def page():
    """page(settings, db=..., learning_curve=...) → AppTest of the data-team page after its first run."""
    def make(settings, db=None, learning_curve=None, outputs=()):
        at = AppTest.from_function(_page, kwargs={"learning_curve": learning_curve}, default_timeout=60)
        at.session_state[PIPELINE_KEY] = Pipeline(settings, generator=ScriptedGenerator(list(outputs)))
        if db is not None:
            at.session_state["conn_db"] = db  # what the Ask page's sidebar picked
        at.run()
        assert not at.exception, at.exception
        return at
    return make


def editor(at):
    [area] = [t for t in at.text_area if t.label == "Glossary (YAML)"]
    return area


def texts(elements) -> str:
    return "\n".join(e.value for e in elements)


def test_demo_glossary_shown_and_checked(page, demo_settings):
    at = page(demo_settings)
    assert not at.error
    assert editor(at).value == GLOSSARY.read_text()
    assert str(GLOSSARY) in texts(at.caption) and "never modified" in texts(at.caption)
    at.button(key="glossary_check").click().run()
    assert not at.error and "check out against the live schema" in texts(at.success)
    assert not at.warning


def test_invalid_yaml_is_never_saved(page, demo_settings):
    user_copy = demo_settings.data_dir / "glossaries" / "demo.glossary.yml"
    user_copy.parent.mkdir(parents=True)
    user_copy.write_text(GOOD)
    before, shipped = user_copy.read_bytes(), GLOSSARY.read_bytes()
    at = page(demo_settings)
    assert editor(at).value == GOOD  # the user's copy is what is edited
    editor(at).set_value("metrics:\n  - name: revenue\n    sql: [unclosed\n").run()
    at.button(key="glossary_save").click().run()
    assert "Not saved" in texts(at.error) and "not valid YAML" in texts(at.error)
    editor(at).set_value("metrics: []\nmeasures: []\n").run()  # valid YAML, but not a glossary
    at.button(key="glossary_save").click().run()
    assert "Not saved" in texts(at.error) and "unknown: measures" in texts(at.error)
    assert user_copy.read_bytes() == before and GLOSSARY.read_bytes() == shipped
    assert not list(user_copy.parent.glob(".*tmp*"))


def test_save_with_entry_problems_warns_and_names_them(page, demo_settings):
    at = page(demo_settings)
    editor(at).set_value(GOOD + "  - name: payroll\n    sql: stores.salary\n").run()
    at.button(key="glossary_save").click().run()
    target = demo_settings.data_dir / "glossaries" / "demo.glossary.yml"
    assert "Saved to" in texts(at.success) and "2 entries check out" in texts(at.success)
    warning = texts(at.warning)
    assert "terms[2] 'payroll'" in warning and "salary" in warning and "saved anyway" in warning
    assert "payroll" in target.read_text()


def test_saved_demo_glossary_reaches_the_next_prompt(page, demo_settings):
    shipped = GLOSSARY.read_bytes()
    at = page(demo_settings)
    editor(at).set_value(GOOD).run()
    at.button(key="glossary_save").click().run()
    target = demo_settings.data_dir / "glossaries" / "demo.glossary.yml"
    assert not at.error and target.read_text() == GOOD and GLOSSARY.read_bytes() == shipped
    # the saved copy is what questions use from now on, with no setting to change; the page edits it in place
    assert not at.warning and "Save writes it in place" in texts(at.caption)

    gen = ScriptedGenerator(["SELECT COUNT(*) FROM stores"])
    pipe = Pipeline(demo_settings, generator=gen)
    answer = pipe.ask("How many outlets are there?")
    assert answer.error is None and answer.glossary == ["store count"]
    assert "-- store count = COUNT(stores.store_id)" in gen.prompts[0]

    # pointed at the copy, the page edits it in place and no longer warns
    at = page(demo_settings.replace(glossary=str(target)))
    assert editor(at).value == GOOD and "Save writes it in place" in texts(at.caption) and not at.warning


def test_file_database_glossary_saved_beside_it_is_used(page, demo_settings, sqlite_db, tmp_path_factory):
    folder = tmp_path_factory.mktemp("warehouse")  # outside the data dir: nl2sql refuses its own files as a db
    db = folder / "concert_singer.sqlite"
    shutil.copy(sqlite_db, db)
    at = page(demo_settings, db=str(db))
    assert not at.error, texts(at.error)
    assert "No glossary is used for this database yet" in texts(at.caption)
    editor(at).set_value("terms:\n  - name: performer\n    synonyms: [performers]\n    sql: singer.name\n").run()
    at.button(key="glossary_save").click().run()
    beside = folder / "concert_singer.glossary.yml"
    assert beside.exists() and "Saved to" in texts(at.success)
    assert "NL2SQL_GLOSSARY" not in texts(at.warning)  # found by itself beside the file: nothing to set
    assert f"In use: `{beside}`. Save writes it in place." in texts(at.caption)
    gen = ScriptedGenerator(["SELECT name FROM singer"])
    answer = Pipeline(demo_settings, generator=gen).ask("List the performers", str(db))
    assert answer.error is None and "-- performer = singer.name" in gen.prompts[0]


def test_try_a_question_shows_the_entries_it_gets(page, demo_settings):
    at = page(demo_settings)
    at.text_input(key="glossary_try").set_value("What was the revenue last month?").run()
    assert "revenue" in texts(at.caption)
    assert any("-- revenue = SUM(order_lines.quantity" in c.value for c in at.code)
    # it reads the editor, saved or not
    editor(at).set_value(GOOD).run()
    at.text_input(key="glossary_try").set_value("How many outlets?").run()
    assert [c.value for c in at.code if c.language == "sql"] == [
        '-- store count = COUNT(stores.store_id) "How many stores there are."']
    at.text_input(key="glossary_try").set_value("Which colour sells best?").run()
    assert "No entry matches" in texts(at.caption)


def test_verified_pairs_listed_per_database(page, demo_settings, sqlite_db):
    log = QueryLog(demo_settings.query_log_path)
    up = log.record(question="How many stores?", db="demo", sql="SELECT COUNT(*) FROM stores", executed=True,
                    dialect="duckdb")
    log.feedback(up, rating=1)
    down = log.record(question="Stores per region", db="demo", sql="SELECT region FROM stores", executed=True,
                      dialect="duckdb")
    log.feedback(down, rating=-1)  # thumbs-down, no correction: never an example
    fixed = log.record(question="Biggest store", db="demo", sql="SELECT 1", executed=True, dialect="duckdb")
    log.feedback(fixed, rating=-1, corrected_sql="SELECT store_id FROM stores ORDER BY square_feet DESC LIMIT 1")
    log.add_verified([("How many singers?", "SELECT COUNT(*) FROM singer")], db=db_key(str(sqlite_db)),
                     dialect="sqlite", comment="imported from other.jsonl")
    at = page(demo_settings)
    [df] = [d.value for d in at.dataframe if "question" in d.value.columns]
    assert list(df["question"]) == ["Biggest store", "How many stores?"]
    assert list(df["source"]) == ["corrected", "thumbs-up"] and df["used"].all()
    assert "2 verified pairs" in texts(at.caption)


def test_import_widget_imports_good_lines_and_names_bad_ones(page, demo_settings):
    at = page(demo_settings)
    assert "No verified pairs for this database yet" in texts(at.info)
    lines = [{"question": "How many customers are there?", "sql": "SELECT COUNT(*) FROM customers"},
             {"question": "What do stores pay?", "sql": "SELECT salary FROM stores"},
             {"question": "Remove stores", "sql": "DELETE FROM stores"},
             {"question": "Number of products", "sql": "SELECT COUNT(*) FROM products"}]
    body = "\n".join(json.dumps(r) for r in lines).encode()
    at.file_uploader(key="pairs_file").set_value(("team_pairs.jsonl", body, "application/json")).run()
    at.button(key="pairs_import").click().run()
    assert not at.exception and not at.error
    assert "Imported 2 pairs from team_pairs.jsonl" in texts(at.success)
    skipped = texts(at.warning)
    assert "Skipped 2 lines" in skipped and "line 2:" in skipped and "line 3:" in skipped
    [df] = [d.value for d in at.dataframe if "question" in d.value.columns]
    assert set(df["question"]) == {"How many customers are there?", "Number of products"}
    assert set(df["source"]) == {"imported"}
    rows = sqlite3.connect(demo_settings.query_log_path).execute(
        "SELECT db, comment FROM entries").fetchall()
    assert rows == [("demo", "imported from team_pairs.jsonl")] * 2


def test_import_widget_refuses_a_file_that_is_not_json_lines(page, demo_settings):
    at = page(demo_settings)
    body = b'{"question": "How many stores?", "sql": "SELECT COUNT(*) FROM stores"}\nnot json\n'
    at.file_uploader(key="pairs_file").set_value(("bad.jsonl", body, "application/json")).run()
    at.button(key="pairs_import").click().run()
    assert "Nothing imported" in texts(at.error) and "Line 2 of bad.jsonl is not JSON" in texts(at.error)
    assert QueryLog(demo_settings.query_log_path).entries() == []


def test_learning_curve_chart_from_results(page, demo_settings, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({
        "held_out_kinds": 8, "test_questions": 16, "pool": 90, "seed": 0,
        "points": [{"config": "retrieval+glossary", "corrections": n, "accuracy": a}
                   for n, a in [(0, 0.5), (10, 0.6), (50, 0.8)]]
        + [{"config": "retrieval", "corrections": n, "accuracy": a} for n, a in [(0, 0.25), (50, 0.7)]]}))
    at = page(demo_settings, learning_curve=str(results))
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    [spec] = [s for s in specs if s.get("title") == "Accuracy on held-out kinds of question"]
    assert spec["mark"]["type"] == "line"
    assert spec["encoding"]["x"]["field"] == "corrections" and spec["encoding"]["color"]["field"] == "config"
    assert "16 demo questions of 8 held-out kinds" in texts(at.caption)


def test_learning_curve_absent_says_how_to_make_it(page, demo_settings, tmp_path):
    at = page(demo_settings, learning_curve=str(tmp_path / "nowhere" / "results.json"))
    assert "python benchmarks/learning_curve.py" in texts(at.info)
    (tmp_path / "broken.json").write_text("{not json")
    at = page(demo_settings, learning_curve=str(tmp_path / "broken.json"))
    assert "Cannot read the learning-curve results" in texts(at.warning) and not at.exception
