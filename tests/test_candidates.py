"""Execution voting over candidates, and literals snapped to the database's spelling, on real engines.

The model is scripted (a list of candidates per question); validation, the guarded executor and the engines
are real (the singer database of tests/conftest.py on SQLite, DuckDB, PostgreSQL and MariaDB)."""
import pytest

from nl2sql.api import Pipeline
from nl2sql.generate import ScriptedGenerator

FRANCE = "SELECT name FROM singer WHERE country = 'France'"
NOBODY = "SELECT name FROM singer WHERE country = 'Atlantis'"


def _pipe(settings, *outputs, **changes):
    return Pipeline(settings.replace(**changes), generator=ScriptedGenerator(outputs))


def test_the_result_most_candidates_agree_on_wins(settings, any_db):
    # two spellings of the same query agree; the likelier single candidate loses to them
    a = _pipe(settings, [(NOBODY, -0.1), (FRANCE, -0.5), (FRANCE.replace("name", "Name"), -0.7)],
              candidates=3).ask("Which singers do we have?", any_db)   # names no value (see the next tests)
    assert a.ok and a.agreement == 2 and a.candidates == 3
    assert "France" in a.sql and len(a.df) > 0


def test_invalid_candidates_do_not_vote_and_ties_go_to_the_likelier(settings, any_db):
    a = _pipe(settings, [("SELECT salary FROM singer", -0.1), (FRANCE, -0.9),
                         ("SELECT name FROM singer WHERE age > 100", -0.2)], candidates=3).ask("Who?", any_db)
    # the valid non-empty result beats the empty one although the empty one is likelier
    assert a.ok and a.agreement == 1 and "France" in a.sql


def test_all_candidates_invalid_is_a_clear_error(settings, any_db):
    a = _pipe(settings, [("SELECT salary FROM singer", -0.1), ("SELECT wage FROM singer", -0.2)],
              candidates=2, repair_attempts=1).ask("What do singers earn?", any_db)
    assert not a.ok and a.agreement == 0 and a.df is None
    assert "salary" in a.error or "wage" in a.error


def test_a_candidate_that_times_out_loses_but_others_still_vote(settings, sqlite_db):
    slow = ("SELECT COUNT(*) FROM " + ", ".join(f"singer AS s{i}" for i in range(14))
            + " WHERE s0.name LIKE '%' || s1.name || '%'")  # 6^14 rows: minutes, far past the timeout
    a = _pipe(settings, [(slow, -0.1), ("SELECT COUNT(*) FROM singer", -0.4)], candidates=2,
              statement_timeout=0.5).ask("How many singers?", str(sqlite_db))
    assert a.ok and int(a.df.iloc[0, 0]) == 6


def test_without_execution_candidates_agree_by_sql(settings, sqlite_db):
    a = _pipe(settings, [(NOBODY, -0.1), (FRANCE, -0.5), (FRANCE, -0.6)], candidates=3).ask(
        "Which singers do we have?", str(sqlite_db), execute=False)
    assert a.ok and a.df is None and a.agreement == 2 and "France" in a.sql


@pytest.mark.parametrize("written", ["france", "FRANCE", "Francee"])
def test_literals_take_the_databases_spelling(settings, any_db, written):
    a = _pipe(settings, f"SELECT name FROM singer WHERE country = '{written}'").ask("Singers from France?", any_db)
    assert a.ok and "'France'" in a.sql and len(a.df) > 0


def test_literals_unlike_any_value_are_left_alone(settings, any_db):
    a = _pipe(settings, NOBODY).ask("Singers from Atlantis?", any_db)
    assert a.ok and "'Atlantis'" in a.sql and len(a.df) == 0
    off = _pipe(settings, "SELECT name FROM singer WHERE country = 'france'", snap_literals=False)
    a = off.ask("Singers from France?", any_db)
    assert "'france'" in a.sql


def test_a_value_the_question_never_mentions_gives_way_to_the_one_it_does(settings, any_db):
    # a small model copies a value it saw in the prompt; the question names another value of that column
    a = _pipe(settings, NOBODY).ask("Which singers are from France?", any_db)
    assert a.ok and "'France'" in a.sql and "'Atlantis'" not in a.sql and len(a.df) > 0
    # ... or of another column of the table: the comparison moves there
    a = _pipe(settings, "SELECT COUNT(*) FROM singer WHERE name = 'Atlantis'").ask("How many singers from France?",
                                                                                  any_db)
    assert a.ok and "country = 'france'" in a.sql.lower().replace('"', "").replace("`", "") and int(a.df.iloc[0, 0]) > 0
    # a value the question does say is kept, even when the column holds none like it
    a = _pipe(settings, NOBODY).ask("Which singers are from Atlantis or France?", any_db)
    assert "'Atlantis'" in a.sql
    off = _pipe(settings, NOBODY, snap_literals=False).ask("Which singers are from France?", any_db)
    assert "'Atlantis'" in off.sql


def test_sql_that_reads_no_table_is_no_answer(settings, sqlite_db):
    a = _pipe(settings, "SELECT COUNT(*)", constrained=False).ask("How many singers?", str(sqlite_db))
    assert not a.ok and "reads no table" in a.error and a.df is None
