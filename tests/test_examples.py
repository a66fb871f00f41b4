"""Verified pairs retrieved into prompts (nl2sql/examples.py): a correction is used by the very next question,
thumbs-down answers never, another database's pairs never, imports are all-or-nothing per good pair, stale
pairs are skipped, and thousands of pairs stay fast."""
from __future__ import annotations

import json
import time

import pytest

from nl2sql.errors import InputError
from nl2sql.examples import ExampleStore, import_pairs
from nl2sql.querylog import QueryLog, db_key


@pytest.fixture
def log_settings(settings, tmp_path):
    return settings.replace(query_log=str(tmp_path / "log.sqlite"), examples=3)


def _pipe(settings, *outputs):
    from nl2sql.api import Pipeline
    from nl2sql.generate import ScriptedGenerator
    return Pipeline(settings, generator=ScriptedGenerator(list(outputs)))


def test_a_correction_is_used_by_the_very_next_question(log_settings, sqlite_db):
    db = str(sqlite_db)
    pipe = _pipe(log_settings, "SELECT COUNT(*) FROM singer", "SELECT COUNT(*) FROM singer")
    a = pipe.ask("How many singers are older than 40?", db)
    assert a.examples == []
    log = QueryLog(log_settings.query_log_path)
    entry = log.record(question="How many singers are older than 40?", db=db_key(db), sql=a.sql, executed=True,
                       dialect="sqlite")
    log.feedback(entry, rating=-1, corrected_sql="SELECT COUNT(*) FROM singer WHERE age > 40")
    b = pipe.ask("How many singers are older than 30?", db)
    assert b.examples == ["How many singers are older than 40?"]
    prompt = pipe.generator.prompts[1]
    assert "-- Question: How many singers are older than 40?\n-- SQL:\nSELECT COUNT(*) FROM singer WHERE age > 40\n" \
        in prompt
    assert prompt.index("older than 40") < prompt.index("older than 30")  # the example comes before the question


def test_thumbs_down_is_never_an_example_and_thumbs_up_is(log_settings, sqlite_db):
    db = db_key(str(sqlite_db))
    log = QueryLog(log_settings.query_log_path)
    bad = log.record(question="Which singers are French?", db=db, sql="SELECT name FROM singer", executed=True)
    log.feedback(bad, rating=-1)
    good = log.record(question="Which singers are Dutch?", db=db,
                      sql="SELECT name FROM singer WHERE country = 'Netherlands'", executed=True)
    log.feedback(good, rating=1)
    log.record(question="Which singers are young?", db=db, sql="SELECT name FROM singer WHERE age < 30", executed=True)
    found = ExampleStore(log_settings.query_log_path).search(db, "Which singers are French or Dutch or young?", 5)
    assert [(e.question, e.source) for e in found] == [("Which singers are Dutch?", "positive")]


def test_pairs_of_another_database_are_never_retrieved(log_settings, sqlite_db, tmp_path):
    log = QueryLog(log_settings.query_log_path)
    other = tmp_path / "other.sqlite"
    log.add_verified([("How many singers are there?", "SELECT COUNT(*) FROM singer")], db=db_key(str(other)),
                     dialect="sqlite", comment="test")
    store = ExampleStore(log_settings.query_log_path)
    assert store.search(db_key(str(sqlite_db)), "How many singers are there?", 3) == []
    assert len(store.search(db_key(str(other)), "How many singers are there?", 3)) == 1


def test_stale_pairs_are_skipped_and_newest_verification_wins(log_settings, sqlite_db):
    from nl2sql.api import Pipeline
    db = str(sqlite_db)
    schema = Pipeline(log_settings).schema(db)
    log = QueryLog(log_settings.query_log_path)
    log.add_verified([("Average singer salary?", "SELECT AVG(salary) FROM singer"),
                      ("Average singer age?", "SELECT AVG(age) FROM singer"),
                      ("Average singer age?", "SELECT AVG(age) FROM singer WHERE age > 0")],
                     db=db_key(db), dialect="sqlite", comment="test")
    found = ExampleStore(log_settings.query_log_path).search(db_key(db), "average singer salary and age", 3,
                                                             schema=schema)
    assert [(e.question, e.sql) for e in found] == [("Average singer age?", "SELECT AVG(age) FROM singer WHERE age > 0")]


def test_import_checks_every_pair_and_writes_the_good_ones_in_one_go(log_settings, sqlite_db, tmp_path):
    from nl2sql.api import Pipeline
    db = str(sqlite_db)
    schema = Pipeline(log_settings).schema(db)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in [
        {"question": "How many concerts?", "sql": "SELECT COUNT(*) FROM concert"},
        {"question": "Drop it", "sql": "DROP TABLE singer"},
        {"question": "Salaries", "sql": "SELECT salary FROM singer"},
        {"question": "Oldest singer?", "sql": "SELECT name FROM singer ORDER BY age DESC LIMIT 1"},
    ]) + "\n")
    log = QueryLog(log_settings.query_log_path)
    n, problems = import_pairs(pairs, schema=schema, log=log, db_key=db_key(db))
    assert n == 2 and len(problems) == 2
    assert problems[0].startswith("line 2:") and problems[1].startswith("line 3:") and "salary" in problems[1]
    rows = log.entries()
    assert [r["question"] for r in rows] == ["How many concerts?", "Oldest singer?"]
    assert all(r["session"] == "import" and r["corrected_sql"] for r in rows)
    found = ExampleStore(log_settings.query_log_path).search(db_key(db), "How many concerts are there?", 1)
    assert found[0].source == "imported"


@pytest.mark.parametrize("content,match", [("not json\n", "Line 2 .* is not JSON"),
                                           ('{"question": "x"}\n', "needs a non-empty"),
                                           ('["a", "b"]\n', "needs a non-empty")])
def test_a_bad_pairs_file_is_refused_before_anything_is_written(log_settings, sqlite_db, tmp_path, content, match):
    from nl2sql.api import Pipeline
    schema = Pipeline(log_settings).schema(str(sqlite_db))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"question": "How many?", "sql": "SELECT COUNT(*) FROM singer"}\n' + content)
    log = QueryLog(log_settings.query_log_path)
    with pytest.raises(InputError, match=match) as e:
        import_pairs(pairs, schema=schema, log=log, db_key="x")
    assert e.value.hint and log.entries() == []


def test_import_cli_reports_and_the_next_ask_uses_it(log_settings, sqlite_db, tmp_path, monkeypatch):
    import subprocess
    import sys
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"question": "Singers from France?",
                                 "sql": "SELECT name FROM singer WHERE country = 'France'"}) + "\n")
    env = {**__import__("os").environ, "NL2SQL_QUERY_LOG": str(log_settings.query_log_path),
           "NL2SQL_DATA_DIR": str(log_settings.data_dir)}
    out = subprocess.run([sys.executable, "-m", "nl2sql.cli", "examples", "import", str(pairs), "--db", str(sqlite_db)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "imported 1 verified pair" in out.stdout
    out = subprocess.run([sys.executable, "-m", "nl2sql.cli", "examples", "search", "--db", str(sqlite_db),
                          "--question", "Which singers come from France?"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert "select name from singer where country = 'france'" in out.stdout.lower()
    out = subprocess.run([sys.executable, "-m", "nl2sql.cli", "examples", "import", str(tmp_path / "missing.jsonl")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "Cannot read the pairs file" in out.stderr


def test_thousands_of_pairs_stay_fast(log_settings, sqlite_db):
    db = db_key(str(sqlite_db))
    log = QueryLog(log_settings.query_log_path)
    log.add_verified([(f"How many singers are older than {i} years?", f"SELECT COUNT(*) FROM singer WHERE age > {i}")
                      for i in range(5000)], db=db, dialect="sqlite", comment="test")
    store = ExampleStore(log_settings.query_log_path)
    t = time.perf_counter()
    store.search(db, "singers older than 4999 years", 3)
    build = time.perf_counter() - t
    t = time.perf_counter()
    found = store.search(db, "singers older than 4999 years", 3)
    query = time.perf_counter() - t
    assert found[0].question == "How many singers are older than 4999 years?"
    print(f"5000 pairs: index {build * 1000:.0f} ms, query {query * 1000:.1f} ms")  # figures, not assertions


def test_only_examples_of_the_same_kind_are_shown(log_settings, sqlite_db):
    """A pair sharing less than NL2SQL_EXAMPLES_MIN_OVERLAP of its content words with the question is left out:
    the model would copy the wrong parts of it."""
    db = str(sqlite_db)
    QueryLog(log_settings.query_log_path).add_verified(
        [("How many singers are older than 40?", "SELECT COUNT(*) FROM singer WHERE age > 40"),
         ("Which concerts took place in 2014?", "SELECT concert_id FROM concert WHERE year = 2014")],
        db=db_key(db), dialect="sqlite", comment="test")
    pipe = _pipe(log_settings, "SELECT COUNT(*) FROM singer", "SELECT COUNT(*) FROM singer")
    assert pipe.ask("How many singers are older than 30?", db).examples == ["How many singers are older than 40?"]
    assert pipe.ask("How many singers come from France?", db).examples == []  # shares only "singer"
    loose = _pipe(log_settings.replace(examples_min_overlap=0), "SELECT COUNT(*) FROM singer")
    assert len(loose.ask("How many singers come from France?", db).examples) == 1
