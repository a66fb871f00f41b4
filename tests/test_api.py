"""ask() composed over real databases with a scripted fake model; bad input; the CLI's error lines."""
import os
import subprocess
import sys

import pytest

from nl2sql.errors import ConnectError, InputError, ModelError, SchemaError

from conftest import SINGERS


def test_ask_on_every_engine(any_db, fake_pipeline):
    pipe = fake_pipeline("SELECT country, COUNT(*) FROM singer GROUP BY country ORDER BY COUNT(*) DESC")
    a = pipe.ask("How many singers per country?", any_db)
    assert a.error is None, a.error
    assert a.df.iloc[0, 0] == "France" and int(a.df.iloc[0, 1]) == 4
    assert set(a.timings) >= {"schema", "generate", "validate", "execute", "total"}
    assert a.model == "scripted"
    prompt = pipe.generator.prompts[0]
    assert "singer(" in prompt.replace('"', "") and prompt.endswith("-- SQL:\n")
    assert "singer" in pipe.generator.grammars[0]  # constrained by a grammar built for this schema


def test_ask_without_execution_returns_dialect_sql(postgres_url, fake_pipeline):
    a = fake_pipeline("SELECT name FROM singer WHERE age > 40 LIMIT 2").ask("Who is over 40?", postgres_url, execute=False)
    assert a.df is None and a.sql == "SELECT name FROM singer WHERE age > 40 LIMIT 2"


def test_model_mistake_is_an_answer_error_not_an_exception(sqlite_db, fake_pipeline):
    a = fake_pipeline("SELECT salary FROM singer").ask("What do singers earn?", str(sqlite_db))
    assert a.df is None and "salary" in a.error and a.error_type == "ValidationError"


def test_ask_on_demo_warehouse(fake_pipeline):
    a = fake_pipeline("SELECT COUNT(*) FROM order_lines").ask("How many order lines?")
    assert int(a.df.iloc[0, 0]) >= 100_000


@pytest.mark.parametrize("question,error", [("", InputError), ("   ", InputError), (None, InputError),
                                            ("x" * 10_000_000, InputError)])
def test_bad_questions(question, error, fake_pipeline, sqlite_db):
    with pytest.raises(error) as e:
        fake_pipeline("SELECT 1").ask(question, str(sqlite_db))
    assert e.value.hint


def test_database_without_tables(tmp_path, fake_pipeline):
    import sqlite3
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(SchemaError, match="no tables"):
        fake_pipeline("SELECT 1").ask("Anything?", str(empty))


def test_wide_schema_is_cut_to_the_prompt_budget_not_refused(tmp_path, settings):
    """A table wider than NL2SQL_MAX_PROMPT_COLUMNS keeps its best-matching columns (nl2sql/linking.py)."""
    import sqlite3
    wide = tmp_path / "wide.sqlite"
    con = sqlite3.connect(wide)
    con.execute("CREATE TABLE t (" + ", ".join(f"c{i} INTEGER" for i in range(500)) + ")")
    con.execute("INSERT INTO t (c1) VALUES (7)")
    con.commit()
    con.close()
    from nl2sql.api import Pipeline
    from conftest import FakeGenerator
    model = FakeGenerator(["SELECT c1 FROM t"])
    pipe = Pipeline(settings.replace(max_prompt_columns=300), generator=model)
    a = pipe.ask("What is in c1?", str(wide))
    assert a.ok and int(a.df.iloc[0, 0]) == 7
    schema_line = next(line for line in model.prompts[0].splitlines() if line.startswith("t("))
    assert "c1 number" in schema_line and schema_line.count(" number") <= 300


def test_missing_model_path(settings):
    from nl2sql.model import load
    with pytest.raises(ModelError, match="does not exist"):
        load(settings.replace(model="/nonexistent/model/dir"))


def test_public_execute_uses_guarded_path(sqlite_db):
    import nl2sql
    res = nl2sql.execute("SELECT name FROM singer WHERE age > 40 ORDER BY age", db=str(sqlite_db))
    assert list(res.df["Name"]) == ["Rose White", "John Nizinik", "Joe Sharp"]
    with pytest.raises(nl2sql.UnsafeSQLError):
        nl2sql.execute("DELETE FROM singer", db=str(sqlite_db))


@pytest.mark.parametrize("args,needle", [
    (["ask", ""], "The question is empty"),
    (["ask", "How many?", "--db", "/nonexistent.sqlite"], "No database file"),
    (["ask", "How many?", "--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x"], "Cannot connect"),
    (["ask", "How many?", "--model", "/no/such/model"], "does not exist"),
    (["adapters", "promote", "nope"], "No adapter version"),
])
def test_cli_errors_are_one_line(args, needle, settings):
    env = {**os.environ, "NL2SQL_DATA_DIR": str(settings.data_dir)}
    p = subprocess.run([sys.executable, "-m", "nl2sql.cli", *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1
    assert needle in p.stderr and "Traceback" not in p.stderr and "pw" not in p.stderr.replace("pwd", "")


def test_progress_is_told_each_stage_as_it_starts(sqlite_db, fake_pipeline):
    seen = []
    a = fake_pipeline("SELECT COUNT(*) FROM singer").ask("How many singers?", str(sqlite_db), progress=seen.append)
    assert a.error is None
    stages = list(dict.fromkeys(seen))
    assert stages[0] == "schema" and stages.index("link") < stages.index("generate") < stages.index("execute")


def test_a_failing_progress_callback_never_fails_the_question(sqlite_db, fake_pipeline):
    def broken(stage):
        raise RuntimeError("display gone")
    assert fake_pipeline("SELECT COUNT(*) FROM singer").ask("How many?", str(sqlite_db), progress=broken).error is None
