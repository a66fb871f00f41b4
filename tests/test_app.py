"""The analyst app driven through Streamlit's AppTest: a scripted fake model, the real demo DuckDB warehouse and
real SQLite files, the real query log. Each flow of the issue: ask, edit + rerun, chart, feedback, history and
follow-ups, a question typed while another is answered, bad connections, the data team's page."""
import json
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nl2sql.querylog import QueryLog
from nl2sql.ui.session import PIPELINE_KEY

APP = str(Path(__file__).resolve().parents[1] / "app.py")
BY_REGION = "SELECT region, COUNT(*) AS stores FROM stores GROUP BY region"


@pytest.fixture
def app(fake_pipeline, settings, tmp_path):
    """make(*model_outputs, **setting_overrides) → (AppTest after its first run, pipeline, query log)."""
    def make(*outputs, **overrides):
        pipe = fake_pipeline(*outputs)
        pipe.settings = settings.replace(query_log=str(tmp_path / "querylog.sqlite"), **overrides)
        at = AppTest.from_file(APP, default_timeout=60)
        at.session_state[PIPELINE_KEY] = pipe
        at.run()
        assert not at.exception, at.exception
        return at, pipe, QueryLog(pipe.settings.query_log_path)
    return make


def ask(at, question):
    at.chat_input[0].set_value(question).run()
    return settle(at)


def busy(at) -> bool:
    return at.session_state["job"] is not None if "job" in at.session_state else False


def settle(at, wait=60):
    """Rerun until no answer is being written (answers come from a background thread; the browser's timer
    reruns the page, here the test does)."""
    deadline = time.monotonic() + wait
    while busy(at) or ("queued" in at.session_state and at.session_state["queued"]):
        assert time.monotonic() < deadline, "the answer never came"
        time.sleep(0.05)
        at.run()
    assert not at.exception, at.exception
    return at


def chart_spec(at):
    charts = at.get("vega_lite_chart")
    return json.loads(charts[0].proto.spec) if charts else None


def test_ask_shows_sql_table_chart_timings_and_logs_it(app):
    at, pipe, log = app(BY_REGION)
    assert not at.error and not at.chat_input[0].disabled
    ask(at, "How many stores are in each region?")
    assert [c.value for c in at.code] == [BY_REGION]
    assert at.code[0].language == "sql"
    df = at.main.dataframe[0].value
    assert list(df.columns) == ["region", "stores"] and df["stores"].sum() == 16 and "West" in set(df["region"])
    spec = chart_spec(at)
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["x"]["field"] == "region"
    captions = " ".join(c.value for c in at.caption)
    assert "generate" in captions and "total" in captions and "model scripted" in captions and "5 rows" in captions
    [e] = log.entries()
    assert (e["question"], e["sql"], e["db"], e["executed"], e["model"], e["adapter"]) == (
        "How many stores are in each region?", BY_REGION, "demo", 1, "scripted", None)
    assert e["latency"] > 0 and e["dialect"] == "duckdb" and e["rating"] is None


def test_row_cap_is_noted(app):
    at, _, log = app("SELECT customer_id FROM customers", row_limit=7)
    ask(at, "List all customers")
    assert len(at.main.dataframe[0].value) == 7
    assert any("row limit (NL2SQL_ROW_LIMIT)" in c.value for c in at.caption)
    assert chart_spec(at) is None  # identifiers alone are no chart


def test_model_mistake_is_shown_not_raised(app):
    at, _, log = app("SELECT salary FROM stores")
    ask(at, "What do stores earn?")
    assert "salary" in at.error[0].value and not at.main.dataframe
    assert at.code[0].value == "SELECT salary FROM stores"  # the model's text, to fix by hand
    assert log.entries()[0]["executed"] == 0 and "salary" in log.entries()[0]["error"]


def test_edit_rerun_and_keep_logs_the_correction(app, tmp_path):
    at, pipe, log = app(BY_REGION)
    ask(at, "How many stores are in each region?")
    fixed = "SELECT region, COUNT(*) AS stores FROM stores WHERE region <> 'Online' GROUP BY region"
    assert at.button(key="keep-1").disabled  # nothing edited yet
    at.text_area(key="sql-1").set_value(fixed)
    at.button(key="run-1").click().run()
    assert not at.exception and not at.error
    assert "Online" not in set(at.main.dataframe[0].value["region"]) and len(at.main.dataframe[0].value) == 4
    assert at.code[0].value == fixed
    assert log.entries()[0]["corrected_sql"] is None  # ran, not yet kept
    at.button(key="keep-1").click().run()
    assert at.success and log.entries()[0]["corrected_sql"] == fixed
    out = tmp_path / "pairs.jsonl"
    assert log.export_training(out) == 1
    assert json.loads(out.read_text()) == {"question": "How many stores are in each region?", "sql": fixed,
                                           "db": "demo", "label": "corrected"}


@pytest.mark.parametrize("sql,message", [("DROP TABLE stores", "read"), ("SELECT nonsense FROM stores", "nonsense"),
                                         ("SELECT 1; SELECT 2", "one")])
def test_bad_edit_is_refused_by_the_guarded_executor(app, sql, message):
    at, _, log = app(BY_REGION)
    ask(at, "How many stores are in each region?")
    at.text_area(key="sql-1").set_value(sql)
    at.button(key="run-1").click().run()
    assert not at.exception
    assert message in at.error[0].value.lower() and not at.main.dataframe
    assert at.button(key="keep-1").disabled
    assert log.entries()[0]["corrected_sql"] is None


def test_chart_type_can_be_switched_or_turned_off(app):
    at, _, _ = app("SELECT year, SUM(quantity) AS units FROM order_lines JOIN orders USING (order_id) "
                   "JOIN calendar ON calendar.date_key = orders.order_date GROUP BY year ORDER BY year")
    ask(at, "Units sold per year?")
    assert not at.error, at.error
    assert chart_spec(at)["mark"]["type"] == "line"  # a time series
    at.button_group(key="chart-1").set_value("bar").run()
    assert chart_spec(at)["mark"]["type"] == "bar"
    at.button_group(key="chart-1").set_value("off").run()
    assert chart_spec(at) is None and at.main.dataframe  # the table stays


def test_feedback_and_comment_are_written_to_the_log(app):
    at, _, log = app(BY_REGION, "SELECT COUNT(*) FROM customers")
    ask(at, "How many stores are in each region?")
    at.feedback(key="rating-1").set_value(1).run()
    assert log.entries()[0]["rating"] == 1 and log.entries()[0]["rated_at"]
    at.text_input(key="comment-1").input("right, but Online is not a region").run()
    ask(at, "How many customers?")
    at.feedback(key="rating-2").set_value(0).run()
    first, second = log.entries()
    assert first["comment"] == "right, but Online is not a region" and first["rating"] == 1
    assert second["rating"] == -1 and second["question"] == "How many customers?"
    assert first["session"] and first["session"] == second["session"]


def test_thread_keeps_every_answer_and_follow_up_carries_the_previous_one(app):
    at, pipe, log = app("SELECT COUNT(*) AS n FROM orders",
                        "SELECT COUNT(*) AS n FROM orders WHERE order_date >= '2024-01-01'",
                        "SELECT COUNT(*) FROM products", "SELECT COUNT(*) FROM stores")
    ask(at, "How many orders are there?")
    ask(at, "now only for 2024")
    prompt = pipe.generator.prompts[1]
    assert "-- Question: How many orders are there?\n-- SQL:\nSELECT COUNT(*) AS n FROM orders\n" in prompt
    assert prompt.endswith("-- Question: now only for 2024\n-- SQL:\n")
    assert json.loads(log.entries()[1]["context"]) == [["How many orders are there?", "SELECT COUNT(*) AS n FROM orders"]]
    # both answers stay on the page, oldest first, each with its SQL and table
    assert [c.value for c in at.code] == ["SELECT COUNT(*) AS n FROM orders",
                                          "SELECT COUNT(*) AS n FROM orders WHERE order_date >= '2024-01-01'"]
    assert [m.markdown[0].value for m in at.chat_message if m.name == "user"] == [
        "How many orders are there?", "now only for 2024"]
    assert len(at.main.dataframe) == 2 and any("Follow-up to" in c.value for c in at.caption)
    assert "now only for 2024" in at.toggle(key="follow_up").label  # the newest answer by default
    at.button(key="follow-1").click().run()  # follow up on the first answer instead
    assert "How many orders are there?" in at.toggle(key="follow_up").label
    ask(at, "and how many products?")
    assert "-- Question: How many orders are there?\n" in pipe.generator.prompts[2]
    assert "2024" not in pipe.generator.prompts[2]
    at.toggle(key="follow_up").set_value(False).run()
    ask(at, "How many stores?")
    assert "How many" not in pipe.generator.prompts[3].split("-- Question: How many stores?")[0]
    assert log.entries()[3]["context"] is None
    assert len(at.code) == 4 and [e["question"] for e in log.entries()] == [
        "How many orders are there?", "now only for 2024", "and how many products?", "How many stores?"]


class Gated:
    """A scripted model that holds its first answer until the test opens the gate."""

    def __init__(self, inner):
        self.inner, self.gate, self.calls = inner, threading.Event(), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def candidates(self, *args, **kw):
        self.calls += 1
        if self.calls == 1:
            assert self.gate.wait(60)
        return self.inner.candidates(*args, **kw)


def test_questions_typed_while_an_answer_is_written_are_queued_not_lost(app):
    from nl2sql.ui.session import MAX_QUEUED
    outputs = [BY_REGION, "SELECT COUNT(*) AS n FROM customers", "SELECT COUNT(*) AS n FROM products",
               "SELECT COUNT(*) AS n FROM orders"]
    at, pipe, log = app(*outputs)
    pipe._generator = gated = Gated(pipe.generator)
    questions = ["Stores per region?", "How many customers?", "How many products?", "How many orders?"]
    at.chat_input[0].set_value(questions[0]).run()
    assert busy(at) and not at.code
    assert at.status[0].icon == "spinner" and at.status[0].label.endswith(" s")  # the stage and the seconds so far
    for q in questions[1:]:
        at.chat_input[0].set_value(q).run()
        assert not at.exception, at.exception
    assert [m.markdown[0].value for m in at.chat_message if m.name == "user"] == questions
    assert sum("Queued" in c.value for c in at.caption) == MAX_QUEUED == 3
    assert at.chat_input[0].disabled  # three waiting: the box says so instead of taking more
    assert any("questions are waiting" in c.value for c in at.caption)
    gated.gate.set()
    settle(at)
    assert [c.value for c in at.code] == outputs and len(at.main.dataframe) == 4
    assert [e["question"] for e in log.entries()] == questions
    assert not at.chat_input[0].disabled and not at.status


def test_sqlite_file_connection_and_schema_browser(app, sqlite_db):
    at, pipe, log = app("SELECT country, COUNT(*) AS singers FROM singer GROUP BY country")
    at.sidebar.radio(key="conn_kind").set_value("DuckDB or SQLite file").run()
    assert at.info and at.chat_input[0].disabled  # nothing entered yet
    at.sidebar.text_input(key="conn_path").input(str(sqlite_db)).run()
    assert not at.error and not at.chat_input[0].disabled
    labels = [e.label for e in at.sidebar.expander]
    assert any(label.startswith("singer (") for label in labels) and any(label.startswith("concert (") for label in labels)
    cols = next(df.value for df in at.sidebar.dataframe if "Country" in set(df.value["column"]))
    assert {"column", "type", "key", "comment", "sample values"} <= set(cols.columns)
    assert cols.loc[cols["column"] == "Singer_ID", "key"].item() == "PK"
    assert cols.loc[cols["column"] == "Country", "sample values"].item()  # sample values shown
    ask(at, "Singers per country?")
    assert at.main.dataframe[0].value["singers"].sum() == 6
    assert log.entries()[0]["db"] == str(Path(sqlite_db).resolve()) and log.entries()[0]["dialect"] == "sqlite"


@pytest.mark.parametrize("kind,key,value,expect", [
    ("DuckDB or SQLite file", "conn_path", "/no/such/warehouse.duckdb", "No database file"),
    ("SQLAlchemy URL", "conn_url", "postgresql+psycopg://nobody:s3cret@127.0.0.1:1/x", "Cannot connect"),
    ("SQLAlchemy URL", "conn_url", "nosuchdb://x/y", "Cannot use"),
])
def test_bad_connection_is_a_clear_error(app, kind, key, value, expect):
    at, _, _ = app()
    at.sidebar.radio(key="conn_kind").set_value(kind).run()
    at.sidebar.text_input(key=key).input(value).run()
    assert not at.exception
    [err] = at.error
    assert expect in err.value and "s3cret" not in err.value and "Traceback" not in err.value
    assert at.chat_input[0].disabled
    at.sidebar.radio(key="conn_kind").set_value("Demo warehouse").run()
    assert not at.error and not at.chat_input[0].disabled


def _team_page():
    from nl2sql.ui import team
    team.render()


def test_data_team_page(app, fake_pipeline, settings, tmp_path):
    at, pipe, log = app(BY_REGION, "SELECT salary FROM stores")
    ask(at, "How many stores are in each region?")
    at.feedback(key="rating-1").set_value(1).run()
    ask(at, "What do stores earn?")
    team = AppTest.from_function(_team_page, default_timeout=30)
    team.session_state[PIPELINE_KEY] = pipe
    team.run()
    assert not team.exception and not team.error
    metrics = {m.label: m.value for m in team.metric}
    summary = json.loads((Path(APP).parent / "benchmarks" / "results" / "demo" / "summary.json").read_text())
    assert metrics["Execution accuracy"] == f"{summary['execution_accuracy'] * 100:.1f} %"
    assert metrics["Answers"] == "2" and metrics["Rated"] == "1" and metrics["Thumbs up"] == "100 %"
    from nl2sql.ui.team import LEARNING_CURVE  # its chart is there when the benchmark's results are
    assert len(team.get("vega_lite_chart")) == 4 + LEARNING_CURVE.exists()


def test_a_crash_while_answering_ends_the_answer_with_a_message(app):
    at, pipe, log = app()  # no scripted output left: the model raises

    class Broken:
        model_name, adapter_name = "broken", None

        def candidates(self, *args, **kw):
            raise RuntimeError("driver said password=s3cret")
    pipe._generator = Broken()
    ask(at, "How many stores?")
    [err] = at.error
    assert "RuntimeError" in err.value and "s3cret" not in err.value and not busy(at)
    assert log.entries()[0]["question"] == "How many stores?" and "RuntimeError" in log.entries()[0]["error"]
    assert not at.chat_input[0].disabled
