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
                                           "db": "demo", "label": "corrected", "model_sql": BY_REGION}


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


# --- the app against `nl2sql serve` (NL2SQL_SERVER): a real service in a subprocess ----------------------------
# Scripted model unless marked `model`. The app's process must load no model: the loader and the in-process
# pipeline are replaced by ones that fail the test.

TOKEN = "app-test-token"
COUNT = "SELECT COUNT(*) AS n FROM customers"


@pytest.fixture
def served(tmp_path, settings, monkeypatch):
    """make(*outputs, seconds=0, token=..., app_token=..., server=..., state=..., **server_env) → (AppTest after its
    first run, the server process, the server's query log). The scripted model answers each question after
    `seconds` (no outputs: the bundled model, `nl2sql serve` itself); `state` goes into the session first."""
    import nl2sql.api
    import nl2sql.model
    from serving import ServeProcess

    def no_model(*a, **kw):
        raise AssertionError("the app loaded a model in its own process")
    monkeypatch.setattr(nl2sql.model, "load", no_model)
    monkeypatch.setattr(nl2sql.api, "default_pipeline", no_model)
    servers = []

    def make(*outputs, seconds=0.0, token=TOKEN, app_token=None, server=None, state=None, **server_env):
        log = tmp_path / "server-log.sqlite"
        if server is None:
            env = {"NL2SQL_QUERY_LOG": str(log), "NL2SQL_CANDIDATES": "1", "NL2SQL_DATA_DIR": str(settings.data_dir),
                   "NL2SQL_API_TOKEN": token, **{f"NL2SQL_{k.upper()}": str(v) for k, v in server_env.items()}}
            server = ServeProcess(tmp_path, env, scripted=(seconds, list(outputs)) if outputs else None).start(900)
            servers.append(server)
        monkeypatch.setenv("NL2SQL_SERVER", server.url)
        monkeypatch.setenv("NL2SQL_API_TOKEN", app_token or token)
        at = AppTest.from_file(APP, default_timeout=60)
        for k, v in (state or {}).items():
            at.session_state[k] = v
        at.run()
        assert not at.exception, at.exception
        return at, server, QueryLog(log)
    yield make
    import signal
    for s in servers:
        s.stop(signal.SIGKILL)


def user_questions(at):
    return [m.markdown[0].value for m in at.chat_message if m.name == "user"]


def test_the_app_asks_edits_and_rates_through_the_server(served):
    at, srv, log = served(BY_REGION, "SELECT region, COUNT(*) AS stores FROM stores WHERE region = 'West' "
                                     "GROUP BY region")
    assert not at.error and not at.chat_input[0].disabled
    assert any(srv.url in c.value for c in at.sidebar.caption)
    # the schema browser shows the server's schema, sample values included, and its search works
    assert any(e.label.startswith("stores (") for e in at.sidebar.expander)
    at.sidebar.text_input(key="schema_search").input("region").run()
    assert any(e.label.startswith("stores (") for e in at.sidebar.expander)
    assert not any(e.label.startswith("calendar (") for e in at.sidebar.expander)
    ask(at, "How many stores are in each region?")
    assert [c.value for c in at.code] == [BY_REGION]
    df = at.main.dataframe[0].value
    assert df["stores"].sum() == 16 and chart_spec(at)["mark"]["type"] == "bar"
    assert any("model scripted" in c.value for c in at.caption)
    [e] = log.entries()   # the server logged it, with the app as the client
    assert e["client"].startswith("nl2sql-app ") and e["session"] == at.session_state["session_id"]
    assert (e["question"], e["sql"], e["executed"], e["db"]) == ("How many stores are in each region?", BY_REGION, 1,
                                                                  "demo")
    # an edit runs on the server's guarded executor; keep, rate and comment land in the server's log
    fixed = "SELECT region, COUNT(*) AS stores FROM stores WHERE region <> 'Online' GROUP BY region"
    at.text_area(key="sql-1").set_value(fixed)
    at.button(key="run-1").click().run()
    assert not at.error and len(at.main.dataframe[0].value) == 4
    at.text_area(key="sql-1").set_value("DELETE FROM stores")
    at.button(key="run-1").click().run()
    assert "read" in at.error[0].value.lower() and not at.exception
    at.text_area(key="sql-1").set_value(fixed)
    at.button(key="run-1").click().run()
    at.button(key="keep-1").click().run()
    at.feedback(key="rating-1").set_value(1).run()
    at.text_input(key="comment-1").input("Online is not a region").run()
    [e] = log.entries()
    assert (e["corrected_sql"], e["rating"], e["comment"]) == (fixed, 1, "Online is not a region")
    assert not at.warning
    # a follow-up sends the answer it refers to; both stay on the page as a thread
    ask(at, "now only the West")
    assert user_questions(at) == ["How many stores are in each region?", "now only the West"]
    assert len(at.code) == 2 and len(at.main.dataframe) == 2
    assert json.loads(log.entries()[1]["context"]) == [["How many stores are in each region?", fixed]]
    team = AppTest.from_function(_team_page, default_timeout=30)
    team.run()
    assert not team.exception and srv.url in team.info[0].value   # its log is the server's


def test_questions_typed_while_the_server_answers_are_queued(served):
    from nl2sql.ui.session import STAGES
    at, srv, log = served(BY_REGION, COUNT, seconds=3)
    at.chat_input[0].set_value("Stores per region?").run()
    assert busy(at)
    # the status line names the stage the server is in, as in process (the answer is streamed), not only seconds
    labels, deadline = [], time.monotonic() + 30
    while not labels or not labels[-1].startswith(STAGES["generate"] + "…"):
        assert busy(at) and time.monotonic() < deadline, labels
        time.sleep(0.05)
        at.run()
        labels.append(at.status[0].label)
    at.chat_input[0].set_value("How many customers?").run()
    assert user_questions(at) == ["Stores per region?", "How many customers?"]
    assert any("Queued" in c.value for c in at.caption)
    settle(at)
    assert [c.value for c in at.code] == [BY_REGION, COUNT] and len(at.main.dataframe) == 2
    assert [e["question"] for e in log.entries()] == ["Stores per region?", "How many customers?"]


def test_a_server_that_is_down_or_refuses_the_token_is_a_clear_message(served, tmp_path):
    from serving import ServeProcess
    later = ServeProcess(tmp_path, {"NL2SQL_API_TOKEN": TOKEN, "NL2SQL_QUERY_LOG": str(tmp_path / "later.sqlite")},
                         scripted=(0, [COUNT]))   # not started yet: nothing listens on its port
    at, _, _ = served(server=later)
    [err] = at.error
    assert "did not answer" in err.value and "nl2sql serve" in err.value and "Traceback" not in err.value
    assert at.chat_input[0].disabled
    later.start()
    try:
        at.sidebar.button(key="conn_retry").click().run()   # the server is up now
        assert not at.error and not at.chat_input[0].disabled
    finally:
        later.stop()
    at, _, log = served(COUNT, app_token="wrong-token")
    [err] = at.error
    assert "token" in err.value and "NL2SQL_API_TOKEN" in err.value and "wrong-token" not in err.value
    assert at.chat_input[0].disabled and log.entries() == []


def test_a_url_that_is_not_nl2sql_serve_is_a_clear_message(served):
    """NL2SQL_SERVER pointing at another JSON service (200 with other fields): a message naming the setting, not a
    KeyError traceback on the page."""
    import http.server
    from types import SimpleNamespace

    class OtherService(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtherService)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        at, _, _ = served(server=SimpleNamespace(url=f"http://127.0.0.1:{other.server_port}"))
    finally:
        other.shutdown()
    [err] = at.error
    assert "cannot read" in err.value and "NL2SQL_SERVER" in err.value and "KeyError" in err.value
    assert at.chat_input[0].disabled and at.sidebar.button(key="conn_retry")


def test_a_database_the_server_does_not_serve_and_a_flood_are_clear_messages(served, tmp_path):
    # listed when the session began, the server has changed its list since; 3 requests a minute: the two schemas
    # (demo, sales) and one question
    at, srv, log = served(COUNT, serve_requests_per_minute=3, state={"server_databases": ["demo", "sales"]})
    at.sidebar.selectbox(key="conn_server_db").set_value("sales").run()
    err = at.error[0].value
    assert "does not serve sales" in err and "NL2SQL_SERVE_DATABASES" in err and at.chat_input[0].disabled
    at.sidebar.selectbox(key="conn_server_db").set_value("demo").run()
    assert not at.error and not at.chat_input[0].disabled
    ask(at, "How many customers?")
    assert at.main.dataframe and not at.error
    ask(at, "How many customers again?")
    err = at.error[0].value
    assert "Too many requests" in err and "Retry in" in err and not at.exception
    assert not at.chat_input[0].disabled   # the next question may go when the server allows
    assert [e["question"] for e in log.entries()] == ["How many customers?"]


def test_a_server_restarted_mid_answer_is_a_message_and_the_next_question_is_answered(served):
    import signal
    at, srv, log = served(COUNT, seconds=30)
    at.chat_input[0].set_value("How many customers?").run()
    srv.wait_for("generating 1")
    srv.stop(signal.SIGKILL)
    settle(at)
    [err] = at.error
    assert "went away" in err.value and "Retry" in err.value and "Traceback" not in err.value
    assert log.entries() == [] and not at.chat_input[0].disabled
    srv.scripted = (0, [COUNT])
    srv.start()
    ask(at, "How many customers?")
    assert len(at.main.dataframe) == 1 and len(at.error) == 1   # the first turn keeps its message
    assert [e["question"] for e in log.entries()] == ["How many customers?"]


def test_the_app_process_imports_no_model_code(served, tmp_path):
    """In a fresh process (pytest's own has torch loaded by other tests): the app asks through the server and
    neither torch, transformers nor nl2sql's model modules are imported."""
    import os
    import subprocess
    import sys
    _, srv, log = served(COUNT)
    script = f"""
import sys, time
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=60)
at.run()
at.chat_input[0].set_value("How many customers?").run()
deadline = time.monotonic() + 60
while at.session_state["job"] is not None or at.session_state["queued"]:
    assert time.monotonic() < deadline
    time.sleep(0.05)
    at.run()
assert not at.exception and not at.error, (at.exception, at.error)
print(len(at.main.dataframe), sorted(m for m in ("torch", "transformers", "llguidance", "nl2sql.model",
                                                 "nl2sql.generate") if m in sys.modules))
"""
    env = {**os.environ, "NL2SQL_SERVER": srv.url, "NL2SQL_API_TOKEN": TOKEN}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[-2] == "1 []"
    assert [e["question"] for e in log.entries()] == ["How many customers?"]


@pytest.mark.model
def test_the_app_against_nl2sql_serve_with_the_bundled_model(served):
    """`nl2sql serve` itself (the CLI, the bundled model, batched generation) answering the app."""
    at, srv, log = served()
    at.chat_input[0].set_value("How many stores are in each region?").run()
    settle(at, wait=900)
    assert not at.error, at.error
    assert at.code and "stores" in at.code[0].value.lower() and len(at.main.dataframe[0].value) == 5
    [e] = log.entries()
    assert e["executed"] == 1 and e["client"].startswith("nl2sql-app ") and e["model"] != "scripted"
